"""Rule checks: a guardrail rule and a text (or an example's input fields) in, the rule's violations out.

A rule is a dict: `id`, `name`, `kind`, `config`, `stage`, `enforcement`, `prompts` (see `workspace/rules.py`,
which stores them). Each violation names the rule, its enforcement, the matched span (character offsets into the
checked text, and the input field for input rules) and the matched text. A check returns [] when the rule holds,
and None when there was nothing to check (no text, or a rule for other prompts).

User-supplied regular expressions are compiled with RE2 (`google-re2`), which runs in time linear in the text, so
no pattern can hang the process; keyword lists use Python's `re` on escaped literals, which cannot backtrack.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypedDict

import pixeltable as pxt

__all__ = [
    'Violation',
    'KINDS',
    'PII_ENTITIES',
    'INJECTION_PATTERNS',
    'check',
    'check_config',
    'check_settings',
    'SETTINGS',
    'check_text',
    'check_fields',
    'fields_violations',
    'compile_re2',
    'count_tokens',
    'no_urls',
]

#: The rule kinds checked here (`judge` rules call a model, so `workspace/rules.py` checks them).
KINDS = ('regex', 'keyword', 'length', 'pii', 'injection', 'json_schema', 'custom')

#: The longest text a check reads; the rest is not checked (a violation past it would not be reported).
MAX_TEXT = 200_000
_MAX_MATCH = 200


class Violation(TypedDict):
    """One rule failing on one text: the rule, where (field and span) and what matched."""

    rule: str
    rule_id: str
    kind: str
    stage: str
    enforcement: str
    field: str | None
    span: list[int] | None
    match: str | None
    message: str


def _violation(rule: Mapping[str, Any], span: tuple[int, int] | None, text: str, message: str) -> Violation:
    return Violation(
        rule=rule['name'],
        rule_id=rule.get('id', rule['name']),
        kind=rule['kind'],
        stage=rule.get('stage', 'output'),
        enforcement=rule.get('enforcement', 'warn'),
        field=None,
        span=list(span) if span is not None else None,
        match=text[span[0] : span[1]][:_MAX_MATCH] if span is not None else None,
        message=message,
    )


# --- regex ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def compile_re2(pattern: str) -> Any:
    """Compile `pattern` with RE2 (linear time); raise ValueError naming what RE2 does not support."""
    import re2

    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(
            f'pattern {pattern!r} does not compile with RE2: {detail}. RE2 has no backreferences or look-around; '
            'use inline flags such as (?i)'
        ) from None


def _regex(rule: Mapping[str, Any], text: str) -> list[Violation]:
    pattern = compile_re2(rule['config']['pattern'])
    return [_violation(rule, m.span(), text, f'matches /{pattern.pattern}/') for m in pattern.finditer(text)]


# --- keyword --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _keywords(words: tuple[str, ...]) -> re.Pattern[str]:
    # Escaped literals in one alternation cannot backtrack catastrophically, and Python's `re` (unlike RE2) knows
    # Unicode word characters, so 'café' is a whole word.
    alternation = '|'.join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf'(?<!\w)(?:{alternation})(?!\w)', re.IGNORECASE)


def _keyword(rule: Mapping[str, Any], text: str) -> list[Violation]:
    pattern = _keywords(tuple(w.casefold() for w in rule['config']['words']))
    return [_violation(rule, m.span(), text, f'contains the keyword {m.group(0)!r}') for m in pattern.finditer(text)]


# --- length ---------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r'\w+|[^\w\s]')


def count_tokens(text: str) -> int:
    """Return the number of tokens in `text`: words and punctuation marks, a model-independent approximation.

    >>> count_tokens('Hello, world!')
    4
    """
    return sum(1 for _ in _TOKEN.finditer(text))


def _length(rule: Mapping[str, Any], text: str) -> list[Violation]:
    config = rule['config']
    unit = config.get('unit', 'chars')
    low, high = config.get('min'), config.get('max')
    if unit == 'tokens':
        ends = [m.end() for m in _TOKEN.finditer(text)]
        size = len(ends)
        cut = ends[high - 1] if high is not None and size > high and high > 0 else 0
    else:
        size = len(text)
        cut = high or 0
    if high is not None and size > high:
        return [_violation(rule, (cut, len(text)), text, f'{size} {unit}, more than the maximum {high}')]
    if low is not None and size < low:
        return [_violation(rule, None, text, f'{size} {unit}, fewer than the minimum {low}')]
    return []


# --- pii ------------------------------------------------------------------------------------------------------

#: The entities a `pii` rule finds, with Presidio's pattern recognizers (no NLP model is loaded).
PII_ENTITIES = (
    'EMAIL_ADDRESS',
    'PHONE_NUMBER',
    'CREDIT_CARD',
    'IBAN_CODE',
    'US_SSN',
    'UK_NINO',
    'ES_NIF',
    'IT_FISCAL_CODE',
)


@functools.lru_cache(maxsize=1)
def _recognizers() -> dict[str, Any]:
    """Return Presidio's pattern recognizers by entity, built to run offline.

    Presidio's analyzer engine would load a spaCy model; its pattern recognizers need none. They validate what
    they match (Luhn for cards, the IBAN checksum, the SSN's reserved ranges); the email recognizer's domain check
    is pointed at tldextract's bundled suffix list instead of the network.
    """
    import tldextract
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        EsNifRecognizer,
        IbanRecognizer,
        ItFiscalCodeRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline(pattern_text).fqdn != ''

    found = {}
    for recognizer in (
        OfflineEmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        EsNifRecognizer(),
        ItFiscalCodeRecognizer(),
    ):
        for entity in recognizer.supported_entities:
            found[entity] = recognizer
    return found


#: The fewest digits a text must hold for an entity to be possible in it: a cheap test that spares the costly
#: recognizers (the phone recognizer tries several regions' numbering plans) on texts with too few digits.
_MIN_DIGITS = {'PHONE_NUMBER': 7, 'CREDIT_CARD': 12, 'IBAN_CODE': 10, 'US_SSN': 9, 'UK_NINO': 6, 'ES_NIF': 8}
_DIGIT = re.compile(r'\d')


def _pii(rule: Mapping[str, Any], text: str) -> list[Violation]:
    config = rule['config']
    entities = list(config.get('entities') or PII_ENTITIES)
    min_score = float(config.get('min_score', 0.4))
    recognizers = _recognizers()
    digits = len(_DIGIT.findall(text))
    hits = []
    for entity in entities:
        if digits < _MIN_DIGITS.get(entity, 0):
            continue
        for r in recognizers[entity].analyze(text, [entity], None):
            if r.score >= min_score:
                hits.append((r.start, r.end, entity))
    hits.sort()
    kept: list[tuple[int, int, str]] = []
    for start, end, entity in hits:  # a card number is not also reported as a phone number
        if kept and start < kept[-1][1]:
            continue
        kept.append((start, end, entity))
    return [_violation(rule, (s, e), text, f'contains {entity.lower().replace("_", " ")}') for s, e, entity in kept]


# --- injection ------------------------------------------------------------------------------------------------

_VERB = r'(?:ignore|disregard|forget|skip|override|bypass|drop|discard|abandon|neglect)'
_OLD = r'(?:previous|prior|preceding|above|earlier|original|initial|former|system|all|any|your|these|those|the)'
_RULES = r'(?:instructions?|prompts?|rules?|directions?|guidelines?|guardrails?|constraints?|programming|context|orders?|commands?|directives?|policies|policy)'
_MODE = r'(?:unrestricted|unfiltered|uncensored|jailbroken|jailbreak|evil|malicious|unaligned|amoral|DAN|developer mode|god mode|sudo mode)'

#: The injection pack: (name, RE2 pattern) heuristics for prompt injection, measured in docs/benchmarks.md.
INJECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ('ignore_instructions', rf'(?i)\b{_VERB}\b[^.\n]{{0,40}}?\b{_OLD}\b[^.\n]{{0,30}}?\b{_RULES}\b'),
    (
        'ignore_everything',
        r'(?i)\b(?:ignore|disregard|forget)\s+(?:everything|anything|all)\s+(?:above|before|previously|you\s+(?:were|have\s+been)\s+told)',
    ),
    (
        'new_instructions',
        r'(?i)\b(?:new|updated|real|actual|revised|true)\s+(?:system\s+)?(?:instructions?|rules|directives?|system\s+prompt)\s*(?::|are\b|follow\b)',
    ),
    ('from_now_on', r'(?i)\bfrom\s+now\s+on,?\s+(?:you\s+(?:will|are|must|shall|should)|respond|answer|act|only)'),
    (
        'role_override',
        rf'(?i)\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+|in\s+|my\s+)?(?:{_MODE}|bound|restricted|an?\s+AI|limited|a\s+different|free)',
    ),
    (
        'act_as',
        rf'(?i)\b(?:act|behave|respond|roleplay|role-play|pretend|speak)\s+(?:as|like)\s+(?:if\s+you\s+(?:were|are)\s+)?(?:an?\s+)?(?:{_MODE}|(?:AI|assistant|model|chatbot)\s+(?:with(?:out)?\s+(?:no\s+)?(?:restrictions|rules|filters|limits)))',
    ),
    (
        'pretend_no_rules',
        r'(?i)\b(?:pretend|imagine|suppose|assume)\s+(?:that\s+)?you\s+(?:are|have|were)\s+(?:no\s+(?:rules|restrictions|limits|filters|guidelines)|not\s+bound|free\s+(?:from|of)|without\s+(?:any\s+)?(?:rules|restrictions|limits|filters))',
    ),
    (
        'jailbreak_names',
        r'(?i)\b(?:DAN|do\s+anything\s+now|developer\s+mode\s+(?:enabled|on|output)|jailbreak(?:ed)?\s+mode|STAN|AIM\s+mode)\b',
    ),
    (
        'disable_safety',
        r'(?i)\b(?:disable|turn\s+off|switch\s+off|deactivate|remove|bypass|ignore|lift)\b[^.\n]{0,25}?\b(?:safety|content)\s*(?:filters?|guidelines|policy|policies|restrictions|checks|protocols)',
    ),
    (
        'reveal_prompt',
        r'(?i)\b(?:reveal|show|print|repeat|output|tell\s+me|display|leak|dump|recite|what\s+(?:is|are|was|were))\b[^.\n?]{0,30}?\b(?:system\s+prompt|initial\s+prompt|hidden\s+(?:prompt|instructions)|original\s+instructions|your\s+(?:instructions|prompt|system\s+message|rules|guidelines))',
    ),
    ('chat_role_marker', r'(?im)^\s*(?:#{1,4}\s*)?(?:system|assistant|developer)\s*(?:message|prompt)?\s*:'),
    (
        'special_tokens',
        r'(?i)<\|?\s*(?:im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id)\s*\|?>|\[/?INST\]|<</?SYS>>',
    ),
    (
        'fake_delimiter',
        r'(?i)(?:-{3,}|={3,}|#{3,}|\*{3,})\s*(?:end\s+of\s+(?:user\s+)?(?:input|prompt|message|text)|begin\s+(?:system|new\s+instructions|admin)|system\s+(?:override|message|prompt))',
    ),
    ('xml_system_tag', r'(?i)</?\s*(?:system|instructions?|admin|sudo)\s*>'),
    ('end_of_input', r'(?i)\b(?:end\s+of\s+(?:user\s+)?input|the\s+user\s+input\s+(?:ends|is\s+over))\b'),
)


@functools.lru_cache(maxsize=8)
def _injection_pack(names: tuple[str, ...] | None) -> list[tuple[str, Any]]:
    chosen = [(n, p) for n, p in INJECTION_PATTERNS if names is None or n in names]
    return [(name, compile_re2(pattern)) for name, pattern in chosen]


def _injection(rule: Mapping[str, Any], text: str) -> list[Violation]:
    names = rule['config'].get('heuristics')
    found = []
    for name, pattern in _injection_pack(tuple(names) if names else None):
        for m in pattern.finditer(text):
            found.append(_violation(rule, m.span(), text, f'looks like a prompt injection ({name})'))
    found.sort(key=lambda v: v['span'] or [0, 0])
    return found


# --- json_schema ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _json_schema(rule: Mapping[str, Any], text: str) -> list[Violation]:
    stripped = text.strip()
    start = text.find(stripped[:1]) if stripped else 0
    span = (start, start + len(stripped))
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as e:
        return [_violation(rule, span, text, f'is not JSON: {e.msg} at character {e.pos}')]
    validator = _validator(json.dumps(rule['config']['schema'], sort_keys=True))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    return [
        _violation(
            rule, span, text, f'does not match the schema at /{"/".join(map(str, e.absolute_path))}: {e.message}'
        )
        for e in errors[:5]
    ]


# --- custom ---------------------------------------------------------------------------------------------------


def _custom_function(name: str) -> Callable[[str], Any]:
    module, _, attr = name.rpartition('.')
    if not (module == 'udfs' or module.startswith('udfs.')) or not attr:
        raise ValueError(f'custom check {name!r} must name a function in the udfs package, e.g. udfs.rules.no_urls')
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(
            f'custom check {name!r}: module {module!r} cannot be imported ({e}); write the function in a module of '
            'the udfs package, e.g. udfs.rules.no_urls'
        ) from None
    fn = getattr(found, attr, None)
    if not callable(fn):
        raise ValueError(f'custom check {name!r} does not exist; define it in {module}')
    return fn


def _custom(rule: Mapping[str, Any], text: str) -> list[Violation]:
    result = _custom_function(rule['config']['function'])(text)
    if result is True or result is None or result is False:
        # a bool answers "does the text hold?": True holds
        return [] if result in (True, None) else [_violation(rule, None, text, 'fails the custom check')]
    spans: Iterable[Any] = result
    return [_violation(rule, (int(s), int(e)), text, 'fails the custom check') for s, e in spans]


_URL = re.compile(r'\bhttps?://[^\s<>"\']+|\bwww\.[^\s<>"\']+', re.IGNORECASE)


def no_urls(text: str) -> list[tuple[int, int]]:
    """Text in; the spans of its URLs out (an example `custom` check: `function='udfs.rules.no_urls'`)."""
    return [m.span() for m in _URL.finditer(text)]


# --- dispatch -------------------------------------------------------------------------------------------------

_CHECKS: dict[str, Callable[[Mapping[str, Any], str], list[Violation]]] = {
    'regex': _regex,
    'keyword': _keyword,
    'length': _length,
    'pii': _pii,
    'injection': _injection,
    'json_schema': _json_schema,
    'custom': _custom,
}


#: The settings each kind of rule takes (a `judge` rule's are checked in `workspace/core/rules.py`).
SETTINGS: dict[str, tuple[str, ...]] = {
    'regex': ('pattern',),
    'keyword': ('words',),
    'length': ('unit', 'min', 'max'),
    'pii': ('entities', 'min_score'),
    'injection': ('heuristics',),
    'json_schema': ('schema',),
    'custom': ('function',),
    'judge': ('judge', 'fail'),
}


def check_settings(kind: str, config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the settings `kind` does not take (a typo would otherwise be ignored)."""
    known = SETTINGS.get(kind, ())
    unknown = [name for name in config if name not in known]
    if not unknown:
        return
    close = [difflib.get_close_matches(name, known, n=1) for name in unknown]
    hints = '; '.join(f'did you mean {c[0]!r} for {n!r}?' for n, c in zip(unknown, close) if c)
    raise ValueError(
        f'a {kind} rule does not take the setting(s) {", ".join(map(repr, unknown))}; its settings are: '
        f'{", ".join(known)}' + (f' ({hints})' if hints else '')
    )


def check_config(kind: str, config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the problem if `config` is not usable for a rule of `kind`."""
    check_settings(kind, config)
    if kind == 'regex':
        if not isinstance(config.get('pattern'), str) or not config['pattern']:
            raise ValueError("a regex rule needs pattern='...'")
        if len(config['pattern']) > 2000:
            raise ValueError('a regex pattern may have at most 2000 characters')
        compile_re2(config['pattern'])
    elif kind == 'keyword':
        words = config.get('words')
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError("a keyword rule needs words=['...', ...], a list of non-empty strings")
    elif kind == 'length':
        if config.get('unit', 'chars') not in ('chars', 'tokens'):
            raise ValueError("a length rule's unit is 'chars' or 'tokens'")
        low, high = config.get('min'), config.get('max')
        if low is None and high is None:
            raise ValueError('a length rule needs min=..., max=... or both')
        for v in (low, high):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f'length limits are whole numbers of at least 0; got {v!r}')
        if low is not None and high is not None and low > high:
            raise ValueError(f'min={low} is more than max={high}')
    elif kind == 'pii':
        entities = config.get('entities')
        if entities is not None and (not isinstance(entities, list) or not all(isinstance(e, str) for e in entities)):
            raise ValueError(f'entities={entities!r} must be a list of entity names, e.g. ["CREDIT_CARD"]')
        unknown = sorted(set(entities or ()) - set(PII_ENTITIES))
        if unknown:
            raise ValueError(f'unknown pii entities {unknown}; choose from {", ".join(PII_ENTITIES)}')
        score = config.get('min_score', 0.4)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise ValueError(f'min_score={score!r} must be a number from 0 to 1')
    elif kind == 'injection':
        known = {n for n, _ in INJECTION_PATTERNS}
        names = config.get('heuristics')
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise ValueError(f'heuristics={names!r} must be a list of heuristic names, e.g. ["ignore_instructions"]')
        unknown = sorted(set(names or ()) - known)
        if unknown:
            raise ValueError(f'unknown injection heuristics {unknown}; choose from {", ".join(sorted(known))}')
    elif kind == 'json_schema':
        if not isinstance(config.get('schema'), dict):
            raise ValueError('a json_schema rule needs schema={...}, a JSON Schema object')
        import jsonschema

        try:
            _validator(json.dumps(config['schema'], sort_keys=True))
        except jsonschema.SchemaError as e:
            raise ValueError(f'schema is not a valid JSON Schema: {e.message}') from None
    elif kind == 'custom':
        if not isinstance(config.get('function'), str):
            raise ValueError("a custom rule needs function='udfs.<module>.<function>'")
        _custom_function(config['function'])
    else:
        raise ValueError(f'rule kind {kind!r} is not one of {", ".join(KINDS)}')


def _applies(rule: Mapping[str, Any], prompt: str | None) -> bool:
    prompts = rule.get('prompts')
    return not prompts or prompt is None or prompt in prompts


def check(rule: Mapping[str, Any], text: str) -> list[Violation]:
    """Return the violations of `rule` in `text` ([] if it holds).

    >>> check({'name': 'no_refunds', 'kind': 'keyword', 'config': {'words': ['refund']}}, 'A REFUND now')[0]['span']
    [2, 8]
    """
    return _CHECKS[rule['kind']](rule, text[:MAX_TEXT])


@pxt.udf
def check_text(text: str | None, prompt: str | None, *, rule: pxt.Json) -> pxt.Json:
    """A text (a rendered prompt or a model output) and its prompt's name in; the rule's violations out (None if
    there is no text or the rule is for other prompts)."""
    if text is None or not _applies(rule, prompt):
        return None
    return list(check(rule, text))


def fields_violations(rule: Mapping[str, Any], fields: Mapping[str, Any]) -> list[Violation]:
    """Return the violations of `rule` in an example's input fields, each naming its field."""
    found: list[Violation] = []
    for name, value in fields.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for v in check(rule, text):
            found.append({**v, 'field': name})
    return found


@pxt.udf
def check_fields(fields: pxt.Json | None, prompt: str | None, *, rule: pxt.Json) -> pxt.Json:
    """An example's input fields and its prompt's name in; the rule's violations out, each naming its field."""
    if fields is None or not _applies(rule, prompt):
        return None
    return fields_violations(rule, fields)
