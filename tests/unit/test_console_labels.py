"""The console's Chinese labels for stored codes: audit actions, actors, routing rules, details."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_backend.console.labels import ACTION_LABELS, action_label, actor_label, detail_label, rule_label
from crm_backend.console.web import build_templates
from crm_backend.lifecycle import CaseAction
from crm_backend.services.admin import USER_OPERATIONS

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("crm_backend", "bot", "actions")
# Action codes built at run time (f"user.{operation}", "case.extension_" + status): the
# operations each prefix is completed with. A new prefix fails the test until it is listed here.
DYNAMIC_ACTIONS: dict[str, tuple[str, ...]] = {
    "case.": tuple(action.value for action in CaseAction),
    "case.extension_": ("approved", "refused"),
    "user.": USER_OPERATIONS,
    "routing.": ("policy", "rule", "delete-rule"),
    "conversation.": ("claim", "assign", "release", "close"),
    "privacy.": tuple(f"{kind}_{step}" for kind in ("copy", "erasure") for step in ("requested", "done", "refused")),
}


# Methods that pass their `action` argument on to `audit.record`: their callers are read instead.
AUDIT_WRAPPERS = {"_audit"}


def _audit_calls(tree: ast.AST) -> Iterator[ast.Call]:
    """Calls of `audit.record(session, actor, action, ...)` and of the wrappers (`self._audit(..., action, ...)`)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            called = (node.func.value.id, node.func.attr)
            if called == ("audit", "record") or (called[0] == "self" and called[1] in AUDIT_WRAPPERS):
                yield node


def _assigned(scope: ast.AST, name: str) -> list[ast.expr]:
    return [
        node.value
        for node in ast.walk(scope)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]


def _codes(node: ast.expr, scopes: list[ast.AST], where: str) -> set[str]:
    """The action codes an expression can take: literals, both arms of a conditional, a
    variable's assignments (in its function, then its module), and the known dynamic families."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _codes(node.body, scopes, where) | _codes(node.orelse, scopes, where)
    if isinstance(node, ast.Name):
        function = scopes[0]
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) and node.id in {
            a.arg for a in function.args.args
        }:
            assert function.name in AUDIT_WRAPPERS, (
                f"{where}: add {function.name}, which passes on an action, to AUDIT_WRAPPERS"
            )
            return set()
        for scope in scopes:
            if values := _assigned(scope, node.id):
                return set().union(*(_codes(value, scopes, where) for value in values))
        raise AssertionError(f"{where}: cannot tell the action codes of {node.id}")
    prefix = None
    if isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
        prefix = node.values[0].value
    elif isinstance(node, ast.BinOp) and isinstance(node.left, ast.Constant):
        prefix = node.left.value
    assert isinstance(prefix, str) and prefix in DYNAMIC_ACTIONS, f"{where}: list the operations of {ast.unparse(node)}"
    return {prefix + operation for operation in DYNAMIC_ACTIONS[prefix]}


def action_codes_in_use() -> set[str]:
    """Every action code the code base writes to the audit log."""
    codes: set[str] = set()
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
            for call in _audit_calls(tree):
                action = (
                    call.args[2] if len(call.args) > 2 else next(k.value for k in call.keywords if k.arg == "action")
                )
                enclosing = [f for f in functions if f.lineno <= call.lineno <= (f.end_lineno or f.lineno)]
                innermost = sorted(enclosing, key=lambda f: f.lineno, reverse=True)
                codes |= _codes(action, [*innermost, tree], f"{path.relative_to(ROOT)}:{call.lineno}")
    return codes


def test_every_audit_action_in_the_code_base_has_a_chinese_label() -> None:
    codes = action_codes_in_use()
    assert {"login", "login.failed", "case.resolve", "conversation.view_phone", "security.proof_ceiling"} <= codes
    assert "api_client.create" in codes and "department.update" in codes  # through a variable
    missing = sorted(code for code in codes if code not in ACTION_LABELS)
    assert missing == [], f"audit actions without a label in crm_backend/console/labels.py: {missing}"


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("login", "登录"),
        ("login.failed", "登录失败"),
        ("case.view", "查看工单"),
        ("case.resolve", "办结工单"),
        ("case.dispatch", "派单"),
        ("conversation.view_phone", "查看完整号码（对话）"),
        ("api_client.create", "新建接口客户端"),
        ("something.new", "something.new"),  # unknown: shown as stored, never hidden
    ],
)
def test_audit_actions_read_in_chinese(code: str, label: str) -> None:
    assert action_label(code) == label


@pytest.mark.parametrize(
    ("stored", "staff", "shown"),
    [
        ("bot", False, "智能助手"),
        ("dispatch", False, "智能分派"),
        ("回访", False, "回访"),
        ("api:ticket-sync", False, "接口「ticket-sync」"),
        ("citizen:42", False, "市民 #42"),
        ("cli", False, "命令行"),
        ("system", False, "系统"),
        ("值班王", True, "值班王"),
        ("bot", True, "bot"),  # a colleague named bot stays bot
    ],
)
def test_actors_read_in_chinese(stored: str, staff: bool, shown: str) -> None:
    assert actor_label(stored, staff=staff) == shown


@pytest.mark.parametrize(
    ("rule", "shown"),
    [
        ("rule: 城乡建设 × A2区", "规则：城乡建设 × A2区"),
        ("default for 城乡建设", "城乡建设默认承办部门"),
        ("manual queue: confidence 0.52 below threshold", "置信度 0.52，低于阈值，转人工派单"),
        ("rule: 城乡建设 × A2区 (category chosen by citizen)", "规则：城乡建设 × A2区（市民自选分类）"),
        ("default for 环境保护 (category chosen by citizen)", "环境保护默认承办部门（市民自选分类）"),
        ("人工指定", "人工指定"),  # anything else as stored
    ],
)
def test_routing_rules_read_in_chinese(rule: str, shown: str) -> None:
    assert rule_label(rule) == shown


@pytest.mark.parametrize(
    ("action", "detail", "shown"),
    [
        ("case.resolve", "in_progress → resolved", "办理中 → 已办结"),
        ("case.dispatch", "received → dispatched；部门 无 → A1区住建局", "已受理 → 已派单；部门 无 → A1区住建局"),
        ("case.return", "accepted → returned；部门 A1区住建局 → 无", "已签收 → 退回；部门 A1区住建局 → 无"),
        ("routing.rule", "A1区 → A市卫生健康委员会", "A1区 → A市卫生健康委员会"),
        ("case.file", "filed by bot", "登记人：智能助手"),
        ("case.file", "filed by api:ticket-sync", "登记人：接口「ticket-sync」"),
        ("case.extension_request", "5 days", "5 个工作日"),
        ("conversation.reply", "as 值班王", "署名 值班王"),
        (
            "security.proof_ceiling",
            "31 failed proofs (case digits or link codes) in the last hour; ceiling 30",
            "最近一小时身份验证失败 31 次（工单号、绑定码），上限 30",
        ),
        ("citizen.link", "telegram channel linked by code (was citizen 7)", "telegram 渠道经绑定码关联（原市民 #7）"),
        (
            "citizen.link",
            "web channel linked by case 20261123-0007 (was citizen 7)",
            "web 渠道经工单 20261123-0007关联（原市民 #7）",
        ),
        ("user.create", "supervisor", "值班长"),
        ("api_client.create", "write", "读写"),
        ("knowledge.update", "v2: questions, answer", "第 2 版：问法、答案"),
        ("knowledge.create", "as good as new", "as good as new"),  # a title, not a reply signature
    ],
)
def test_audit_details_read_in_chinese(action: str, detail: str, shown: str) -> None:
    assert detail_label(detail, action) == shown


def test_the_console_templates_have_the_label_filters() -> None:
    env = build_templates()
    page = env.from_string(
        "{{ 'case.resolve' | action_label }} {{ 'dispatch' | actor_label }} {{ 'default for 城乡建设' | rule_label }}"
        " {{ 'in_progress → resolved' | detail_label('case.resolve') }}"
    ).render()
    assert page == "办结工单 智能分派 城乡建设默认承办部门 办理中 → 已办结"
