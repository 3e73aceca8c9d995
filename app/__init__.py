"""The composition root: builds the server from `bot/` (citizen channels, message pipeline),
`actions/` (the engine's custom actions) and `crm_backend/` (the domain and staff surfaces).

``python -m app`` runs it (`app/__main__.py`); `app.factory.init_app` builds it;
`app.components` opens and closes its resources; `app.settings` reads its settings.
Importing this package connects to nothing and loads nothing.
"""
