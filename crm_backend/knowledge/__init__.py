"""The knowledge base: government-service answers the bot gives, and how questions find them.

`entries` reads the data file the database is first filled from; `retrieval` ranks entries
for a citizen's question; `followups` answers a follow-up ("那需要带什么材料？") from the
entry just given. The entries themselves live in the database (`crm_backend.services.knowledge`).
"""
