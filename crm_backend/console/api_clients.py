"""Administration of API clients: admins make, list and revoke the keys of /api/v1.

A new key is shown once, in the response to the form that made it (not carried across a
redirect, so it sits in no server-side store), and never again: the table keeps its hash.
"""

from __future__ import annotations

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, form, int_or_none, signed_in
from crm_backend.errors import InvalidInput
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission
from crm_backend.services import api_clients
from crm_backend.services.api_clients import ApiScope, IssuedKey

PAGE = "/console/admin/api-clients"


class ApiClientViews(ConsoleBase):
    """The API clients page, for admins only."""

    def __init__(self, base: ConsoleBase) -> None:
        super().__init__(**base.share())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PAGE, self.clients)
        app.router.add_post(PAGE, self.clients_post)

    @signed_in(Permission.ADMINISTER)
    async def clients(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request)

    async def _page(
        self,
        request: web.Request,
        *,
        issued: IssuedKey | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            clients = await api_clients.list_clients(session)
        return self.render(
            request,
            "admin_api_clients.html",
            status=status,
            error=error,
            notice=f"已创建 API 客户端 {issued.client.name}" if issued else None,
            clients=clients,
            issued=issued,
            scopes=list(ApiScope),
        )

    @signed_in(Permission.ADMINISTER)
    async def clients_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        address = client_address(request)
        try:
            async with self.sessions.begin() as session:
                operation = data.get("op")
                if operation == "create":
                    issued = await api_clients.create_client(
                        session, name=data.get("name", ""), scope=data.get("scope", ""), by=member.user, address=address
                    )
                elif operation == "revoke":
                    client_id = int_or_none(data.get("client_id"))
                    if client_id is None:
                        raise InvalidInput("bad_client", "未知的 API 客户端")
                    client = await api_clients.revoke_client(session, client_id, by=member.user, address=address)
                else:
                    raise InvalidInput("bad_op", "未知的操作")
        except InvalidInput as problem:
            return await self._page(request, error=str(problem), status=422)
        if operation == "create":
            return await self._page(request, issued=issued, status=201)
        self.done(request, PAGE, f"已吊销 {client.name}，其密钥立即失效")
