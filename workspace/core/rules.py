"""Guardrail rules: stored and versioned, a computed column on every evaluation table, checked when serving.

A rule checks one stage of a request: the example's `input` fields, the rendered `prompt`, or the model's
`output`. Its enforcement is `block` or `warn` (reported). A blocking input or prompt rule is checked before the
request is sent, wherever a request is made (evaluation, optimization, judging, suggestions, serving): a request
it fails never reaches the model; an evaluation row stores the rule and the span as its error (`BLOCKED`) and
counts as a failure, and serving refuses. A blocking output rule fails the row (or the served request) after the
model answered. Setting a rule whose content changed writes a new version of it, with its parent.

In evaluations each active rule (every kind but `judge`) is a computed column `rule_<name>` of each dataset's
evaluation table, holding the row's violations with their spans; adding or changing a rule recomputes that column
from stored inputs, prompts and outputs, with no model call. A `judge` rule asks a judge version through the
request store, so it is checked where a model is called anyway: when serving with `complete`.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import pixeltable as pxt

from udfs import rules as checks
from workspace.config import current_user, utc_now
from workspace.core.versions import build_request, get_version
from workspace.errors import GuardrailViolation, RuleError
from workspace.storage import audit_log, reads, store, tables

__all__ = [
    'Rule',
    'Stage',
    'Enforcement',
    'RuleKind',
    'Violation',
    'set_rule',
    'get_rule',
    'list_rules',
    'active_rules',
    'check',
    'raise_if_blocked',
    'sync_table',
    'sync_all',
    'column_name',
    'RuleTally',
    'tally',
    'apply_blocks',
    'BLOCKED',
    'blocking_rules',
    'screen',
    'blocked_message',
    'is_blocked',
]

log = logging.getLogger(__name__)

Stage = Literal['input', 'prompt', 'output']
Enforcement = Literal['block', 'warn']
RuleKind = Literal['regex', 'keyword', 'length', 'pii', 'injection', 'json_schema', 'judge', 'custom']
Violation = checks.Violation

_STAGES = ('input', 'prompt', 'output')
_KINDS = (*checks.KINDS, 'judge')
_NAME = re.compile(r'^[a-z][a-z0-9_]{0,47}$')
#: Columns of an evaluation table that a rule column reads, per stage.
_STAGE_COLUMN = {'input': 'input_fields', 'prompt': 'rendered_prompt', 'output': 'output'}


@dataclass(frozen=True)
class Rule:
    """One version of a guardrail rule. Create or change with `set_rule`; never edit in place."""

    id: str
    name: str
    number: int
    parent_id: str | None
    kind: str
    config: dict[str, Any]
    stage: str
    prompts: tuple[str, ...] | None
    enforcement: str
    active: bool
    created_at: datetime.datetime | None = None
    author: str | None = None
    note: str | None = None

    def __repr__(self) -> str:
        scope = ', '.join(self.prompts) if self.prompts else 'every prompt'
        state = '' if self.active else ' inactive'
        return f'<Rule {self.id} {self.kind} on {self.stage}, {self.enforcement}, {scope}{state}>'

    def spec(self) -> dict[str, Any]:
        """Return the rule as the dict the checks in `udfs/rules.py` take."""
        return {
            'id': self.id,
            'name': self.name,
            'kind': self.kind,
            'config': self.config,
            'stage': self.stage,
            'enforcement': self.enforcement,
            'prompts': list(self.prompts) if self.prompts else None,
        }

    def applies_to(self, prompt: str) -> bool:
        """Return whether the rule checks versions of `prompt`."""
        return self.active and (not self.prompts or prompt in self.prompts)


def _row_to_rule(row: Mapping[str, Any]) -> Rule:
    return Rule(
        id=row['rule_id'],
        name=row['name'],
        number=row['number'],
        parent_id=row['parent_id'],
        kind=row['kind'],
        config=dict(row['config'] or {}),
        stage=row['stage'],
        prompts=tuple(row['prompts']) if row['prompts'] else None,
        enforcement=row['enforcement'],
        active=bool(row['active']),
        created_at=row['created_at'],
        author=row['author'],
        note=row['note'],
    )


def _all_rows() -> list[Rule]:
    t = tables.rules()
    rows = reads.READS.get(t, 'all_rules', lambda: list(t.order_by(t.name, t.number).collect()))
    return [_row_to_rule(r) for r in rows]


def _current() -> dict[str, Rule]:
    """Return the latest version of every rule, by name."""
    latest: dict[str, Rule] = {}
    for rule in _all_rows():
        latest[rule.name] = rule
    return latest


def _check_judge(config: Mapping[str, Any]) -> None:
    ref = config.get('judge')
    if not isinstance(ref, str):
        raise RuleError("a judge rule needs judge='<version or prompt@label>', a version whose output is a choice")
    judge = get_version(ref)
    fail = config.get('fail', ['fail'])
    if judge.output['kind'] != 'choice' or not set(fail) <= set(judge.labels):
        raise RuleError(
            f'judge {judge.id} must answer a choice that includes the failing answers {fail}; its output is '
            f'{dict(judge.output)}. Create it with output=ws.choice(["pass", "fail"])'
        )


def _validate(name: str, kind: str, stage: str, enforcement: str, prompts: Any, config: Mapping[str, Any]) -> None:
    if not _NAME.match(name):
        raise RuleError(
            f'rule name {name!r} is not valid; use lower-case letters, digits and _, starting with a letter'
        )
    if kind not in _KINDS:
        raise RuleError(f'rule kind {kind!r} is not one of: {", ".join(_KINDS)}')
    if stage not in _STAGES:
        raise RuleError(f"stage {stage!r} is not one of 'input', 'prompt', 'output'")
    if enforcement not in ('block', 'warn'):
        raise RuleError(f"enforcement {enforcement!r} is not 'block' or 'warn'")
    if prompts is not None and (not prompts or not all(isinstance(p, str) and p for p in prompts)):
        raise RuleError(f'prompts={prompts!r} must be a non-empty list of prompt names, or None for every prompt')
    if kind == 'json_schema' and stage != 'output':
        raise RuleError('a json_schema rule checks the output; use stage="output"')
    try:
        checks.check_settings(kind, config)
    except ValueError as e:
        raise RuleError(f'rule {name!r}: {e}') from None
    if kind == 'judge':
        if stage != 'output':
            raise RuleError('a judge rule judges the model\'s output (it calls a model); use stage="output"')
        _check_judge(config)
        return
    try:
        checks.check_config(kind, config)
    except ValueError as e:
        raise RuleError(f'rule {name!r}: {e}') from None


def set_rule(
    name: str,
    kind: RuleKind,
    *,
    stage: Stage = 'output',
    enforcement: Enforcement = 'warn',
    prompts: Sequence[str] | None = None,
    active: bool = True,
    note: str = '',
    **config: Any,
) -> Rule:
    """Create a rule, or change it: a rule whose content differs from its current version gets a new version.

    The `config` knobs depend on the kind: `regex` pattern= (RE2 syntax), `keyword` words=[...], `length` unit=
    ('chars' or 'tokens'), min=, max=; `pii` entities=[...], min_score=; `injection` heuristics=[...] (default:
    all); `json_schema` schema={...}; `judge` judge='<version>', fail=['fail']; `custom` function='udfs.mod.fn'.
    Every evaluation table gets (or updates) the rule's column at once, with no model call. Setting the same
    content again returns the current version, so a notebook cell can run twice.

    >>> set_rule('no_card_numbers', 'pii', stage='output', enforcement='block', entities=['CREDIT_CARD'])
    """
    prompt_list = sorted(set(prompts)) if prompts is not None else None
    _validate(name, kind, stage, enforcement, prompt_list, config)
    current = _current().get(name)
    content = {
        'kind': kind,
        'config': config,
        'stage': stage,
        'prompts': prompt_list,
        'enforcement': enforcement,
        'active': active,
    }
    if current is not None and content == {
        'kind': current.kind,
        'config': current.config,
        'stage': current.stage,
        'prompts': list(current.prompts) if current.prompts else None,
        'enforcement': current.enforcement,
        'active': current.active,
    }:
        return current
    number = current.number + 1 if current else 1
    row = {
        'rule_id': f'{name}:v{number}',
        'name': name,
        'number': number,
        'parent_id': current.id if current else None,
        **content,
        'created_at': utc_now(),
        'author': audit_log.actor() or current_user(),
        'note': note or None,
    }
    tables.rules().insert([row])
    rule = _row_to_rule(row)
    before = current.spec() | {'active': current.active} if current else None
    audit_log.record(
        'rule.changed' if current else 'rule.created', name, before=before, after=rule.spec() | {'active': active}
    )
    sync_all()
    return rule


def get_rule(name: str) -> Rule:
    """Return the current version of a rule by name, or a version by id (`no_pii:v2`)."""
    if ':' in name:
        found = [r for r in _all_rows() if r.id == name]
        if found:
            return found[0]
        raise RuleError(f'no rule version {name!r}; see ws.list_rules(history=True)')
    current = _current()
    if name not in current:
        raise RuleError(
            f'no rule {name!r}; rules: {", ".join(sorted(current)) or "none yet"}. Create one with ws.set_rule'
        )
    return current[name]


def list_rules(*, history: bool = False) -> pd.DataFrame:
    """Return the current rules (every version with `history=True`), one row each."""
    rules = _all_rows() if history else list(_current().values())
    columns = ['rule', 'kind', 'stage', 'enforcement', 'prompts', 'active', 'config', 'parent', 'created_at', 'author']
    return pd.DataFrame(
        [
            {
                'rule': r.id,
                'kind': r.kind,
                'stage': r.stage,
                'enforcement': r.enforcement,
                'prompts': ', '.join(r.prompts) if r.prompts else '(all)',
                'active': r.active,
                'config': r.config,
                'parent': r.parent_id,
                'created_at': r.created_at,
                'author': r.author,
            }
            for r in rules
        ],
        columns=columns,
    )


def active_rules() -> list[Rule]:
    """Return the current version of every active rule."""
    return [r for r in _current().values() if r.active]


# --- checking one served request ------------------------------------------------------------------------------


def _judge(rule: Rule, text: str, fields: Mapping[str, Any]) -> list[Violation]:
    judge = get_version(rule.config['judge'])
    answer = store.answer(build_request(judge, {**fields, 'text': text}), origin=(judge.id, None, None))
    verdict = (answer['text'] or '').strip()
    if answer['error'] is not None:
        message = f'judge {judge.id} failed: {answer["error"]}'
    elif verdict in rule.config.get('fail', ['fail']):
        message = f'judge {judge.id} answered {verdict!r}'
    else:
        return []
    return [
        checks.Violation(
            rule=rule.name,
            rule_id=rule.id,
            kind='judge',
            stage=rule.stage,
            enforcement=rule.enforcement,
            field=None,
            span=None,
            match=None,
            message=message,
        )
    ]


def check(
    rules: Sequence[Rule], stage: Stage, value: str | Mapping[str, Any], *, fields: Mapping[str, Any] | None = None
) -> list[Violation]:
    """Return the violations of the rules for one stage: `value` is the input fields, the prompt or the output.

    >>> check(active_rules(), 'output', 'Call me at +1 415 555 0132')
    """
    found: list[Violation] = []
    for rule in rules:
        if rule.stage != stage or not rule.active:
            continue
        if rule.kind == 'judge':
            text = value if isinstance(value, str) else str(dict(value))
            found += _judge(rule, text, fields or (value if isinstance(value, Mapping) else {}))
        elif isinstance(value, Mapping):
            found += checks.fields_violations(rule.spec(), value)
        else:
            found += checks.check(rule.spec(), value)
    return found


def raise_if_blocked(violations: Sequence[Violation]) -> None:
    """Raise GuardrailViolation for the first violation of a blocking rule, naming the rule and the span."""
    for v in violations:
        if v['enforcement'] == 'block':
            raise GuardrailViolation(v, list(violations))


# --- before a request is sent ---------------------------------------------------------------------------------

#: How the stored error of a request a rule kept from the model begins; the rest names the rule and the span.
BLOCKED = 'blocked before sending: '


def blocking_rules(prompt: str | Sequence[str], rules: Sequence[Rule] | None = None) -> list[Rule]:
    """Return the active rules that keep a request of `prompt` (or of any of several prompts) from the model:
    `block` rules on the input or the rendered prompt. Judge rules call a model themselves and check outputs."""
    names = [prompt] if isinstance(prompt, str) else list(prompt)
    return [
        r
        for r in (rules if rules is not None else active_rules())
        if r.enforcement == 'block'
        and r.stage in ('input', 'prompt')
        and r.kind != 'judge'
        and any(r.applies_to(n) for n in names)
    ]


def screen(rules: Sequence[Rule], fields: Mapping[str, Any] | None, text: str | None) -> list[Violation]:
    """Return what the blocking `rules` find in a request before it is sent: input rules in its input fields,
    prompt rules in its rendered prompt. An empty list means the request may be sent.

    >>> screen(blocking_rules('ticket_router'), {'text': 'card 4111 1111 1111 1111'}, 'Ticket: card 4111 ...')
    """
    found: list[Violation] = []
    for rule in rules:
        if rule.stage == 'input' and fields is not None:
            found += checks.fields_violations(rule.spec(), fields)
        elif rule.stage == 'prompt' and text is not None:
            found += checks.check(rule.spec(), text)
    return found


def blocked_message(violations: Sequence[Violation]) -> str:
    """Return the error stored for a request kept from the model: `BLOCKED`, the rule, the field and the span.

    The matched text is left out: it is what the rule keeps from leaving (the rule's column holds it)."""
    v = violations[0]
    where = f' in {v["field"]}' if v.get('field') else ''
    found = v.get('span')
    span = f' at characters {found[0]}-{found[1]}' if found else ''
    more = f' (and {len(violations) - 1} more)' if len(violations) > 1 else ''
    return f'{BLOCKED}rule {v["rule"]} ({v["stage"]}{where}){span}: {v["message"]}{more}; not sent to the model'


def is_blocked(error: Any) -> bool:
    """Return whether a stored error says a rule kept the request from the model."""
    return isinstance(error, str) and error.startswith(BLOCKED)


# --- evaluation columns ---------------------------------------------------------------------------------------


def column_name(rule: Rule | str) -> str:
    """Return the evaluation-table column that holds a rule's violations: `rule_<name>`."""
    return f'rule_{rule if isinstance(rule, str) else rule.name}'


def _rule_columns(table: pxt.Table) -> dict[str, str]:
    """Return {column: rule id} for the rule columns of an evaluation table."""
    meta = reads.metadata(table)['columns']
    return {
        name: col['custom_metadata']['rule']
        for name, col in meta.items()
        if isinstance(col.get('custom_metadata'), dict) and col['custom_metadata'].get('rule')
    }


def _expr(table: pxt.Table, rule: Rule) -> Any:
    source = table[_STAGE_COLUMN[rule.stage]]
    fn = checks.check_fields if rule.stage == 'input' else checks.check_text
    return fn(source, table.prompt, rule=rule.spec())


def sync_table(table: pxt.Table, rules: Sequence[Rule] | None = None) -> list[str]:
    """Give an evaluation table one column per active rule (judges excepted), dropping columns of rules changed
    or switched off since; return the names of the columns added. No model call is made."""
    if 'rendered_prompt' not in table.columns():  # evaluation tables made before rules existed
        table.add_columns({'input_fields': pxt.Json | None, 'rendered_prompt': pxt.String | None}, if_exists='ignore')
    wanted = {column_name(r): r for r in (rules if rules is not None else active_rules()) if r.kind != 'judge'}
    present = _rule_columns(table)
    for column, rule_id in present.items():
        if column not in wanted or wanted[column].id != rule_id:
            table.drop_column(column)
    added = []
    for column, rule in wanted.items():
        if present.get(column) == rule.id:
            continue
        table.add_computed_column(**{column: _expr(table, rule)}, custom_metadata={'rule': rule.id}, on_error='ignore')
        added.append(column)
    return added


def sync_all() -> None:
    """Bring the rule columns of every evaluation table up to date with the current rules."""
    rules = active_rules()  # also connects and creates the workspace's directories
    for path in pxt.list_tables(tables.EVALS_DIR):
        table = pxt.get_table(path, if_not_exists='ignore')  # dropped since it was listed: nothing to do
        if table is not None:
            sync_table(table, rules)


# --- summaries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleTally:
    """What the rules found in one run's rows: violations per rule, and which rows a blocking rule failed."""

    violations: dict[str, int]
    blocked: pd.Series  # bool per row
    reasons: pd.Series  # the first blocking violation per row, as a sentence, or None

    def metrics(self) -> dict[str, int]:
        """Return the figures a run summary shows: rows blocked, and violations per rule."""
        if not self.violations:
            return {}
        return {'blocked': int(self.blocked.sum()), **{f'violations:{k}': v for k, v in self.violations.items()}}

    def notes(self) -> list[str]:
        """Return a sentence for the summary when a blocking rule failed on some rows."""
        n = int(self.blocked.sum())
        if not n:
            return []
        first = next(r for r in self.reasons if r)
        return [f'{n} of {len(self.blocked)} rows are blocked by a rule and count as wrong; the first: {first}']


def _reason(v: Mapping[str, Any]) -> str:
    where = f' in {v["field"]}' if v.get('field') else ''
    span = f' at {v["span"][0]}-{v["span"][1]} ({v["match"]!r})' if v.get('span') else ''
    return f'blocked by rule {v["rule"]} ({v["stage"]}{where}){span}: {v["message"]}'


def tally(frame: pd.DataFrame) -> RuleTally:
    """Count the violations in a run's prediction rows (one column per rule) and find the rows a rule blocks."""
    columns = [c for c in frame.columns if c.startswith('rule_')]
    counts: dict[str, int] = {}
    blocked = pd.Series(False, index=frame.index)
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for column in columns:
        name = column[len('rule_') :]
        n = 0
        for i, found in frame[column].items():
            if not isinstance(found, list):
                continue
            n += len(found)
            for v in found:
                if v.get('enforcement') == 'block' and not blocked[i]:
                    blocked[i] = True
                    reasons[i] = _reason(v)
        counts[name] = n
    for i, error in frame['error'].items() if 'error' in frame.columns else ():
        if is_blocked(error) and not blocked[i]:  # kept from the model by a rule since changed or switched off
            blocked[i] = True
            reasons[i] = error
    return RuleTally(counts, blocked, reasons)


def apply_blocks(frame: pd.DataFrame, score_columns: Sequence[str]) -> tuple[pd.DataFrame, RuleTally]:
    """Return a run's rows with blocked rows scored as failures (no prediction, scores 0, the reason in
    `blocked_by`), and the tally. Called by the run summary."""
    result = tally(frame)
    frame = frame.copy()
    frame['blocked_by'] = result.reasons
    if result.blocked.any():
        frame.loc[result.blocked, 'prediction'] = None
        for column in score_columns:
            if column in frame.columns:
                frame[column] = frame[column].astype(object)
                frame.loc[result.blocked, column] = 0.0
    return frame, result
