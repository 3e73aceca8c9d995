"""Chinese labels for the codes the console shows: actors, routing rules, audit actions and details.

The database and the logs keep English codes (`case.resolve`, `dispatch`, `rule: 城乡建设 × A2区`,
`in_progress → resolved`); staff read Chinese. This module is the one place that turns a
stored code into what a page shows; `crm_backend.console.web.build_templates` registers its
functions as Jinja filters. A code without a label is shown as stored rather than hidden.
"""

from __future__ import annotations

import re

from crm_backend.lifecycle import STATUS_LABELS, CaseAction, CaseStatus, Role

# A knowledge entry's fields (the version history and `knowledge.update` audit rows name them).
KNOWLEDGE_FIELD_LABELS: dict[str, str] = {
    "slug": "编号",
    "title": "标题",
    "category": "类别",
    "department": "承办部门",
    "questions": "问法",
    "answer": "答案",
    "follow_ups": "追问",
    "last_reviewed": "审核日期",
    "active": "启用",
}
API_SCOPE_LABELS: dict[str, str] = {"read": "只读", "write": "读写"}

# The system's own actors, as `Actor.system(...)` and `audit.record(actor_name=...)` store them.
SYSTEM_ACTOR_LABELS: dict[str, str] = {
    "bot": "智能助手",
    "dispatch": "智能分派",
    "回访": "回访",
    "system": "系统",
    "cli": "命令行",
    "anonymous": "匿名",
}

_CASE_ACTION_LABELS: dict[CaseAction, str] = {
    CaseAction.DISPATCH: "派单",
    CaseAction.REASSIGN: "改派",
    CaseAction.ACCEPT: "签收",
    CaseAction.START: "开始办理",
    CaseAction.RETURN: "退回",
    CaseAction.RESOLVE: "办结工单",
    CaseAction.REOPEN: "重办",
    CaseAction.REVIEW: "回访",
    CaseAction.ARCHIVE: "归档",
    CaseAction.CLOSE_UNRATED: "未回访归档",
}

# Every action code `audit.record` is called with, anywhere in the code base
# (tests/unit/test_console_labels.py fails when one has no label here).
ACTION_LABELS: dict[str, str] = {
    "login": "登录",
    "login.failed": "登录失败",
    "login.password": "密码正确，待两步验证",
    "login.code_failed": "两步验证码错误",
    "totp.enrol": "启用两步验证",
    "totp.enrol_failed": "启用两步验证失败",
    "totp.recovery_used": "使用恢复码",
    "totp.reset": "重置两步验证",
    "security.totp_required_for_all": "设置两步验证范围",
    "logout": "退出登录",
    "security.proof_ceiling": "身份验证失败次数超限",
    "citizen.link": "关联市民身份",
    "case.file": "登记工单",
    **{f"case.{action.value}": label for action, label in _CASE_ACTION_LABELS.items()},
    "case.view": "查看工单",
    "case.view_phone": "查看完整号码（工单）",
    "case.list": "查询工单列表",
    "case.note": "添加内部备注",
    "case.reply": "回复市民（工单）",
    "case.notify_linked": "通知关联市民",
    "citizen.view": "查看市民档案",
    "case.supervise": "督办",
    "case.unsupervise": "取消督办",
    "case.case_type": "更正类型",
    "case.classify_types": "补录工单类型",
    "case.extension_request": "申请延期",
    "case.extension_approved": "同意延期",
    "case.extension_refused": "驳回延期",
    "dashboard.export": "导出数据看板",
    "open_data.export": "生成开放数据",
    "open_data.download": "下载开放数据",
    "open311.file": "Open311 提交诉求",
    "open311.view": "Open311 查询诉求",
    "case.category": "更正分类",
    "model.promote": "启用分类模型新版本",
    "model.reject": "拒绝分类模型候选版本",
    "model.rollback": "回滚分类模型",
    "hot_issue.merge": "合并热点问题",
    "hot_issue.unrelated": "移出热点问题",
    "history.import": "导入历史留言",
    "conversation.view": "查看对话",
    "conversation.view_phone": "查看完整号码（对话）",
    "conversation.reply": "回复市民（对话）",
    "conversation.claim": "接手对话",
    "conversation.assign": "转交对话",
    "conversation.release": "交还智能助手",
    "conversation.close": "结束对话",
    "conversation.file-case": "由对话登记工单",
    "user.create": "新建账号",
    "user.activate": "启用账号",
    "user.deactivate": "停用账号",
    "user.password": "重置密码",
    "department.create": "新建部门",
    "department.update": "修改部门",
    "routing.policy": "修改分类时限与默认部门",
    "routing.rule": "设置派单规则",
    "routing.delete-rule": "删除派单规则",
    "knowledge.create": "新建知识条目",
    "knowledge.update": "修改知识条目",
    "api_client.create": "新建接口客户端",
    "api_client.revoke": "吊销接口客户端",
    "privacy.copy_requested": "市民申请个人信息副本",
    "privacy.erasure_requested": "市民申请删除个人信息",
    "privacy.copy_done": "已提供个人信息副本",
    "privacy.copy_refused": "驳回副本申请",
    "privacy.erasure_done": "已完成删除申请",
    "privacy.erasure_refused": "驳回删除申请",
    "privacy.exported": "导出市民个人信息",
    "privacy.erased": "删除市民个人信息",
    "retention.applied": "按保存期限清理",
}

_STATUS_CODES = "|".join(re.escape(status.value) for status in STATUS_LABELS)
_STATUS_ARROW = re.compile(rf"\b({_STATUS_CODES}) → ({_STATUS_CODES})\b")
_RULE = re.compile(r"rule: (?P<category>.+?) × (?P<district>.+)")
_DEFAULT = re.compile(r"default for (?P<category>.+)")
_MANUAL = re.compile(r"manual queue: confidence (?P<confidence>[0-9.]+) below threshold")
_CHOSEN_BY_CITIZEN = " (category chosen by citizen)"
_FILED_BY = re.compile(r"filed by (?P<actor>.+)")
_DAYS = re.compile(r"(?P<days>\d+) days")
_REPLY_AS = re.compile(r"as (?P<name>.+)")
_PROOF_CEILING = re.compile(
    r"(?P<failures>\d+) failed proofs \(case digits or link codes\) in the last hour; ceiling (?P<ceiling>\d+)"
)
_KNOWLEDGE_VERSION = re.compile(r"v(?P<version>\d+): (?P<fields>.*)")
_LINKED = re.compile(r"(?P<channel>\S+) channel linked by (?P<how>code|case \S+) \(was citizen (?P<source>\d+)\)")


def status_label(code: str) -> str:
    """A case status code (`resolved`) as staff read it (已办结); an unknown code as it is."""
    try:
        return CaseStatus(code).label
    except ValueError:
        return code


def actor_label(name: str, *, staff: bool = False) -> str:
    """Who did something, as stored in a case event or an audit row, as staff read it.

    Args:
        name: the stored actor: a system step (`bot`, `dispatch`, `回访`), an API client
            (`api:<client>`), a citizen (`citizen:<id>`), or a member of staff's name.
        staff: the row is tied to a member of staff, so `name` is theirs and shown as it is
            (a colleague called "bot" stays "bot").
    """
    if staff:
        return name
    if name in SYSTEM_ACTOR_LABELS:
        return SYSTEM_ACTOR_LABELS[name]
    if name.startswith("api:"):
        return f"接口「{name.removeprefix('api:')}」"
    if name.startswith("citizen:"):
        return f"市民 #{name.removeprefix('citizen:')}"
    return name


def action_label(code: str) -> str:
    """An audit action code (`case.resolve`) as staff read it (办结工单); an unknown code as it is."""
    return ACTION_LABELS.get(code, code)


def rule_label(rule: str) -> str:
    """Why routing sent a case where it did (`RoutingDecision.rule`), in Chinese.

    >>> rule_label("rule: 城乡建设 × A2区")
    '规则：城乡建设 × A2区'
    >>> rule_label("manual queue: confidence 0.52 below threshold")
    '置信度 0.52，低于阈值，转人工派单'
    """
    chosen = rule.endswith(_CHOSEN_BY_CITIZEN)
    core = rule.removesuffix(_CHOSEN_BY_CITIZEN)
    if found := _RULE.fullmatch(core):
        text = f"规则：{found['category']} × {found['district']}"
    elif found := _DEFAULT.fullmatch(core):
        text = f"{found['category']}默认承办部门"
    elif found := _MANUAL.fullmatch(core):
        text = f"置信度 {found['confidence']}，低于阈值，转人工派单"
    else:
        return rule
    return f"{text}（市民自选分类）" if chosen else text


def detail_label(detail: str, action: str = "") -> str:
    """An audit row's detail with its codes in Chinese: status moves, the filing actor, the
    English sentences some services write; anything else (names, titles) as it is.

    Args:
        detail: the stored detail.
        action: the row's action code, which says how to read the detail.
    """
    if action == "case.file" and (found := _FILED_BY.fullmatch(detail)):
        return f"登记人：{actor_label(found['actor'])}"
    if action == "case.extension_request" and (found := _DAYS.fullmatch(detail)):
        return f"{found['days']} 个工作日"
    if action == "security.proof_ceiling" and (found := _PROOF_CEILING.fullmatch(detail)):
        return f"最近一小时身份验证失败 {found['failures']} 次（工单号、绑定码），上限 {found['ceiling']}"
    if action == "citizen.link" and (found := _LINKED.fullmatch(detail)):
        how = "绑定码" if found["how"] == "code" else f"工单 {found['how'].removeprefix('case ')}"
        return f"{found['channel']} 渠道经{how}关联（原市民 #{found['source']}）"
    if action == "user.create" and detail in {role.value for role in Role}:
        return Role(detail).label
    if action == "api_client.create" and detail in API_SCOPE_LABELS:
        return API_SCOPE_LABELS[detail]
    if action == "knowledge.update" and (found := _KNOWLEDGE_VERSION.fullmatch(detail)):
        fields = [KNOWLEDGE_FIELD_LABELS.get(name, name) for name in found["fields"].split(", ")]
        return f"第 {found['version']} 版：{'、'.join(fields)}"
    if action == "conversation.reply" and (found := _REPLY_AS.fullmatch(detail)):
        return f"署名 {found['name']}"
    return _STATUS_ARROW.sub(lambda arrow: f"{status_label(arrow[1])} → {status_label(arrow[2])}", detail)
