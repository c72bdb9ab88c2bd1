"""Template rendering: a version's Jinja2 template plus one example's input fields in, the prompt text out.

Templates run in Jinja2's immutable sandbox with two limits of our own, read from the environment at each render:

- size: no value the template builds and no prompt it renders may be longer than `WORKSPACE_MAX_PROMPT_CHARS`
  characters (default 1,000,000). Operations that can multiply a size (`*`, `**`, `%` and format widths, `center`,
  `indent`, `replace`, `join`, `batch`, `slice`) are checked before they run, so `{{ 'x' * 10**9 }}` never
  allocates; every other value is checked after.
- time: a render stops after `WORKSPACE_RENDER_TIMEOUT_S` seconds (default 5). Each loop iteration, call and
  filter checks the clock: the compiled template is built from a syntax tree in which every `for` iterates
  through a guard, since Python offers no way to interrupt a running render from outside.

`check_template` runs when a version is created: it refuses the constructs the sandbox would only refuse while
rendering (dunder attributes, `mro`, frame and code attributes, methods that change a value in place, format
strings that reach attributes, `include`/`import`/`extends`), then renders the template once with placeholder
inputs so that what the static pass cannot see (an unsafe attribute built at run time, a runaway loop) fails
before the version is stored.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
import pixeltable as pxt
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

__all__ = [
    'RESERVED_VARIABLES',
    'RenderLimitError',
    'RenderTimeoutError',
    'SecurityError',
    'template_variables',
    'check_template',
    'render',
    'render_prompt',
    'max_prompt_chars',
    'render_timeout_s',
    'ROLES',
    'check_messages',
    'messages_variables',
    'render_messages',
    'transcript',
    'parse_transcript',
    'render_chat',
]

#: Variables every template may use besides the dataset's input fields.
RESERVED_VARIABLES = frozenset({'demos', 'labels', 'instructions'})

_DEFAULT_MAX_CHARS = 1_000_000
_DEFAULT_TIMEOUT_S = 5.0


class RenderLimitError(jinja2.TemplateRuntimeError):
    """A render built a value or a prompt over the size limit, or ran over the time limit."""


class RenderTimeoutError(RenderLimitError):
    """A render ran over the time limit."""


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name, '')
    try:
        number = float(value) if value.strip() else default
    except ValueError:
        number = -1.0
    if number <= 0:
        raise ValueError(f'{name}={value!r} is not a positive number; set it to one or unset it')
    return number


def max_prompt_chars() -> int:
    """Return the size limit of a rendered prompt and of any value a template builds (`WORKSPACE_MAX_PROMPT_CHARS`)."""
    return int(_setting('WORKSPACE_MAX_PROMPT_CHARS', _DEFAULT_MAX_CHARS))


def render_timeout_s() -> float:
    """Return the time limit of one render in seconds (`WORKSPACE_RENDER_TIMEOUT_S`)."""
    return _setting('WORKSPACE_RENDER_TIMEOUT_S', _DEFAULT_TIMEOUT_S)


@dataclass(frozen=True)
class _Budget:
    max_chars: int
    timeout_s: float
    deadline: float


# The limits of the render running in this thread (or task); None outside a render (e.g. while Jinja folds
# constants at compile time), where only the size limit applies.
_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar('render_budget', default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise RenderTimeoutError(
            f'rendering took longer than {budget.timeout_s:g} s (WORKSPACE_RENDER_TIMEOUT_S); a loop in the '
            'template runs too long'
        )


def _check_size(size: int, what: str) -> None:
    budget = _budget.get()
    limit = budget.max_chars if budget is not None else max_prompt_chars()
    if size > limit:
        raise RenderLimitError(
            f'{what} would be {size:,} long, over the limit of {limit:,} (WORKSPACE_MAX_PROMPT_CHARS)'
        )


def _check_value(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple, dict, set, frozenset)):
        _check_size(len(value), what)
    return value


_PRINTF = re.compile(r'%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?')


def _printf_width(fmt: str, args: Any) -> int:
    """Return the widest field a printf-style format asks for (`*` widths taken from the arguments)."""
    widest = 0
    star_args = [a for a in (args if isinstance(args, tuple) else (args,)) if isinstance(a, int)]
    for match in _PRINTF.finditer(fmt):
        for group in match.groups():
            if group == '*':
                widest = max([widest, *star_args])
            elif group:
                widest = max(widest, int(group))
    return widest


def _format_width(fmt: str) -> int:
    """Return the widest field a `str.format` string asks for."""
    widest = 0
    for _, _, spec, _ in string.Formatter().parse(fmt):
        for number in re.findall(r'\d+', spec or ''):
            widest = max(widest, int(number))
    return widest


def _replaced_size(s: str, old: str, new: str, count: int | None) -> int:
    hits = s.count(old) if old else len(s) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


def _joined_size(separator: str, items: list[Any]) -> int:
    return len(separator) * max(len(items) - 1, 0) + sum(len(i) for i in items if isinstance(i, str))


def _precheck_binop(operator: str, left: Any, right: Any) -> None:
    if operator == '*':
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and not isinstance(n, bool):
                _check_size(len(seq) * max(n, 0), f'{type(seq).__name__} * {n}')
    elif operator == '**' and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        _check_size(int(right * math.log10(abs(left))) + 1, f'the number {left} ** {right} (in digits)')
    elif operator == '%' and isinstance(left, str):
        _check_size(_printf_width(left, right), 'a field of a % format')


def _precheck_str_method(s: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if name in ('center', 'ljust', 'rjust', 'zfill') and args and isinstance(args[0], int):
        _check_size(args[0], f'str.{name}({args[0]})')
    elif name == 'expandtabs':
        size = args[0] if args else kwargs.get('tabsize', 8)
        if isinstance(size, int):
            _check_size(len(s) + s.count('\t') * size, 'str.expandtabs()')
    elif name == 'replace' and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 else kwargs.get('count')
        _check_size(_replaced_size(s, args[0], args[1], count), 'str.replace()')
    elif name in ('format', 'format_map'):
        _check_size(_format_width(s), 'a field of a str.format() string')


def _precheck_filter(name: str, bound: Mapping[str, Any]) -> None:
    if name == 'center' and isinstance(bound.get('width'), int):
        _check_size(bound['width'], f'center({bound["width"]})')
    elif name == 'indent':
        s, width = str(bound['s']), bound.get('width', 4)
        per_line = len(width) if isinstance(width, str) else width
        if isinstance(per_line, int):
            _check_size(len(s) + (s.count('\n') + 1) * per_line, 'indent()')
    elif name == 'format' and isinstance(bound.get('value'), str):
        _check_size(_printf_width(bound['value'], tuple(bound.get('args', ()))), 'a field of format()')
    elif name == 'replace' and isinstance(bound.get('old'), str) and isinstance(bound.get('new'), str):
        _check_size(_replaced_size(str(bound['s']), bound['old'], bound['new'], bound.get('count')), 'replace()')
    elif name == 'batch' and bound.get('fill_with') is not None and isinstance(bound.get('linecount'), int):
        _check_size(bound['linecount'], f'batch({bound["linecount"]})')
    elif name == 'slice' and isinstance(bound.get('slices'), int):
        _check_size(bound['slices'], f'slice({bound["slices"]})')


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so it checks the clock and, for filters that can multiply a size, the size before it runs."""
    signature = inspect.signature(func)

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context or environment
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if name == 'join':  # the size of the items must be known before joining them
            bound = signature.bind(*args, **kwargs)
            items = list(bound.arguments['value'])
            _check_size(_joined_size(str(bound.arguments.get('d', '')), items), 'join()')
            bound.arguments['value'] = items
            args, kwargs = bound.args, bound.kwargs
        elif name in ('center', 'indent', 'format', 'replace', 'batch', 'slice'):
            bound = signature.bind(*args, **kwargs)
            _precheck_filter(name, bound.arguments)
        return _check_value(func(*args, **kwargs), f'the result of |{name}')

    return guarded


@jinja2.pass_context  # a context filter is never folded into a constant at compile time
def _loop_guard(context: Any, iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _tick()
        yield item


@jinja2.pass_context
def _size_guard(context: Any, value: Any) -> Any:
    return _check_value(value, 'a string joined with ~')


class _Guard(NodeTransformer):
    """Rewrite a parsed template so each `for` iterates through the clock guard and each `~` is size-checked."""

    def visit_For(self, node: nodes.For) -> nodes.For:  # noqa: N802 (Jinja's visitor naming)
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, '_loop_guard', [], [], None, None, lineno=node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:  # noqa: N802
        self.generic_visit(node)
        return nodes.Filter(node, '_size_guard', [], [], None, None, lineno=node.lineno)


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with operators, calls and filters checked against the render's limits."""

    intercepted_binops = frozenset({'*', '**', '%', '+'})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop('lipsum', None)  # generates text of any length, and a favourite root of SSTI payloads
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.filters['_loop_guard'] = _loop_guard
        self.filters['_size_guard'] = _size_guard

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _precheck_binop(operator, left, right)
        return _check_value(super().call_binop(context, operator, left, right), f'the result of {operator!r}')

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        _tick()
        target = getattr(__obj, '__wrapped__', __obj)  # the sandbox wraps str.format
        owner = getattr(target, '__self__', None)
        if isinstance(owner, str):
            _precheck_str_method(owner, getattr(target, '__name__', ''), args, kwargs)
        return _check_value(super().call(__context, __obj, *args, **kwargs), 'the result of a call')


class _TrialUndefined(jinja2.ChainableUndefined):
    """An undefined value that lets a trial render go on past missing data but fails on an unsafe attribute."""

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = jinja2.utils.missing,
        name: str | None = None,
        exc: Any = jinja2.UndefinedError,
    ) -> None:
        if exc is SecurityError:
            raise SecurityError(hint)
        super().__init__(hint, obj, name, exc)


_OPTIONS: dict[str, Any] = {'keep_trailing_newline': True, 'autoescape': False, 'trim_blocks': False}
_env = _LimitedEnvironment(undefined=jinja2.StrictUndefined, **_OPTIONS)
_trial_env = _LimitedEnvironment(undefined=_TrialUndefined, **_OPTIONS)


def _compile(env: jinja2.Environment, template: str) -> jinja2.Template:
    tree = _Guard().visit(env.parse(template))
    tree.set_environment(env)
    return env.from_string(tree)


@functools.lru_cache(maxsize=512)
def _compiled(template: str) -> jinja2.Template:
    return _compile(_env, template)


@functools.lru_cache(maxsize=512)
def _variables(template: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(_env.parse(template)))


def template_variables(template: str) -> set[str]:
    """Return the names of the top-level variables a template reads (raises `jinja2.TemplateSyntaxError`)."""
    return set(_variables(template))


# Attributes the sandbox refuses on the objects that have them: dunders (checked by prefix) and the internals of
# types, frames, code, generators and coroutines.
_UNSAFE_ATTRIBUTES = frozenset(
    {'mro', 'gi_frame', 'gi_code', 'cr_frame', 'cr_code', 'ag_frame', 'ag_code', 'f_globals', 'f_locals'}
    | {'f_builtins', 'f_back', 'f_code', 'tb_frame', 'tb_next', 'co_code', 'func_globals', 'func_code'}
)
# Methods that change a list, dict, set or deque in place, which the immutable sandbox refuses.
_MUTATORS = frozenset().union(*(names for _, names in jinja2.sandbox._mutable_spec))


def _is_unsafe(attribute: str) -> bool:
    return attribute.startswith('__') or attribute in _UNSAFE_ATTRIBUTES


def _unsafe_constructs(tree: nodes.Template) -> list[str]:
    """Return a description of each construct in the template that the sandbox refuses while rendering, in the
    order they appear (an attribute chain is visited outermost first, so each line's findings are reversed)."""
    found = sorted(reversed(list(_unsafe_nodes(tree))), key=lambda item: item[0])
    return list(dict.fromkeys(f'{problem} (template line {line})' for line, problem in found))


def _unsafe_nodes(tree: nodes.Template) -> Iterator[tuple[int, str]]:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Call)):
        where = node.lineno
        if isinstance(node, nodes.Getattr) and _is_unsafe(node.attr):
            yield where, f'the attribute .{node.attr}'
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str) and _is_unsafe(node.arg.value):
                yield where, f'the attribute [{node.arg.value!r}]'
        elif isinstance(node, nodes.Filter) and node.name == 'attr' and node.args:
            if isinstance(node.args[0], nodes.Const) and _is_unsafe(str(node.args[0].value)):
                yield where, f'the attribute |attr({node.args[0].value!r})'
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
            method = node.node.attr
            if method in _MUTATORS:
                yield where, f'the call .{method}(), which would change a value in place'
            elif method in ('format', 'format_map') and isinstance(node.node.node, nodes.Const):
                fmt = node.node.node.value
                if isinstance(fmt, str):
                    for _, field, _, _ in string.Formatter().parse(fmt):
                        parts = re.split(r'[.\[\]]', field or '')
                        if any(_is_unsafe(p) for p in parts[1:]):
                            yield where, f'the format field {{{field}}}, which reads an attribute'
    for loader in tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        tag = {'FromImport': 'from ... import'}.get(type(loader).__name__, type(loader).__name__.lower())
        yield loader.lineno, f'{{% {tag} %}}, but a template cannot load other templates'


def check_template(
    template: str,
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    labels: Sequence[str] = (),
    instructions: str = '',
) -> None:
    """Refuse a template the sandbox would stop while rendering, or that breaks a limit with placeholder inputs.

    Raises `jinja2.TemplateSyntaxError` if it does not parse, `SecurityError` naming the first unsafe construct,
    and `RenderLimitError` if rendering it with each input field set to `'x'` breaks the size or time limit.
    Other errors of that trial render are ignored: the real inputs decide them.
    """
    problems = _unsafe_constructs(_env.parse(template))
    if problems:
        raise SecurityError(', '.join(problems))
    fields = {name: 'x' for name in _variables(template) - RESERVED_VARIABLES - set(_env.globals)}
    try:
        _render(_compile(_trial_env, template), fields, demos, labels, instructions)
    except (SecurityError, RenderLimitError):
        raise
    except Exception:
        pass


def _render(
    compiled: jinja2.Template,
    fields: Mapping[str, Any],
    demos: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    instructions: str,
    timeout_s: float | None = None,
) -> str:
    timeout = render_timeout_s() if timeout_s is None else timeout_s
    budget = _Budget(max_prompt_chars(), timeout, time.monotonic() + timeout)
    token = _budget.set(budget)
    try:
        chunks, size = [], 0
        context = {**fields, 'demos': list(demos), 'labels': list(labels), 'instructions': instructions}
        for chunk in compiled.generate(context):
            size += len(chunk)
            _check_size(size, 'the prompt')
            chunks.append(chunk)
        return ''.join(chunks)
    finally:
        _budget.reset(token)


def render(
    template: str,
    fields: Mapping[str, Any],
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    labels: Sequence[str] = (),
    instructions: str = '',
    timeout_s: float | None = None,
) -> str:
    """Render `template` with one example's `fields`, the version's `demos`, `labels` and `instructions`.

    Instructions a template does not place itself are put on top, separated by a blank line, so that an
    optimizer can propose instructions for any template. Raises `RenderLimitError` past the size or time limit
    (`RenderTimeoutError` past the time limit: `WORKSPACE_RENDER_TIMEOUT_S`, or `timeout_s` when given),
    `SecurityError` on an unsafe construct, and `jinja2.UndefinedError` for a variable `fields` lacks.
    """
    text = _render(_compiled(template), fields, demos, labels, instructions, timeout_s)
    if instructions and 'instructions' not in _variables(template):
        text = f'{instructions}\n\n{text}'
        _check_size(len(text), 'the prompt')
    return text


@pxt.udf
def render_prompt(
    template: str,
    fields: pxt.Json,
    *,
    demos: pxt.Json | None = None,
    labels: pxt.Json | None = None,
    instructions: str = '',
) -> str:
    """Template and input fields (plus demos, labels, instructions) in; rendered prompt text out."""
    return render(template, fields, demos=demos or (), labels=labels or (), instructions=instructions)


# --- chat messages ----------------------------------------------------------------------------------------------

#: The roles a chat version's messages may have.
ROLES = ('system', 'user', 'assistant')


def check_messages(messages: Any) -> list[dict[str, str]]:
    """Return chat messages as plain `{'role', 'content'}` dicts, or raise ValueError naming the first problem.

    Each message is a role (system, user or assistant) and a Jinja2 template; the last one is the user turn that
    holds the example.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            "messages must be a non-empty list such as [{'role': 'system', 'content': '...'}, "
            "{'role': 'user', 'content': 'Ticket: {{ text }}'}]"
        )
    out = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping) or set(message) - {'role', 'content'}:
            raise ValueError(f'message {number} must be a mapping with exactly role and content; got {message!r}')
        role, content = message.get('role'), message.get('content')
        if role not in ROLES:
            raise ValueError(f'message {number} has role {role!r}; use one of {", ".join(ROLES)}')
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f'message {number} ({role}) has no content; give its template text')
        out.append({'role': str(role), 'content': content})
    if out[-1]['role'] != 'user':
        raise ValueError(
            f"the last message is a {out[-1]['role']} turn; end with the user turn that holds the example's fields"
        )
    return out


def messages_variables(messages: Sequence[Mapping[str, str]]) -> set[str]:
    """Return the names of the top-level variables any message template reads."""
    return set().union(*(template_variables(m['content']) for m in messages))


def _answer_text(expected: Any) -> str:
    if isinstance(expected, (dict, list)):
        import json

        return json.dumps(expected, ensure_ascii=False)
    return '' if expected is None else str(expected)


def render_messages(
    messages: Sequence[Mapping[str, str]],
    fields: Mapping[str, Any],
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    labels: Sequence[str] = (),
    instructions: str = '',
) -> list[dict[str, str]]:
    """Render each message template with one example's `fields` (and `demos`, `labels`, `instructions`).

    Demos become turns unless a message reads `demos` itself: before the last user turn, each demo is a user turn
    (the last user template rendered with the demo's fields) and an assistant turn (its `expected`). Instructions
    that no message places open the first system message (or become one). The prompt size limit applies to the
    messages together. Raises like `render`.
    """
    rendered = [
        {'role': m['role'], 'content': _render(_compiled(m['content']), fields, demos, labels, instructions)}
        for m in messages
    ]
    variables = messages_variables(messages)
    if demos and 'demos' not in variables:
        last = messages[-1]['content']
        turns: list[dict[str, str]] = []
        for demo in demos:
            shown = {k: v for k, v in demo.items() if k != 'expected'}
            turns.append({'role': 'user', 'content': _render(_compiled(last), shown, (), labels, instructions)})
            turns.append({'role': 'assistant', 'content': _answer_text(demo.get('expected'))})
        rendered[-1:-1] = turns
    if instructions and 'instructions' not in variables:
        if rendered[0]['role'] == 'system':
            rendered[0] = {'role': 'system', 'content': f'{instructions}\n\n{rendered[0]["content"]}'}
        else:
            rendered.insert(0, {'role': 'system', 'content': instructions})
    _check_size(sum(len(m['content']) for m in rendered), 'the messages')
    return rendered


def transcript(messages: Sequence[Mapping[str, str]]) -> str:
    """Return chat messages as one plain text: each message under its role in brackets, a blank line between.

    >>> transcript([{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}])
    '[system]\nBe brief.\n\n[user]\nHi'
    """
    return '\n\n'.join(f'[{m["role"]}]\n{m["content"]}' for m in messages)


_HEADER = re.compile(r'^\[(system|user|assistant)\]\n', re.M)


def parse_transcript(text: str) -> list[dict[str, str]] | None:
    """Return the messages of a text written as `transcript` writes them, or None if it is not one.

    >>> parse_transcript('[system]\\nBe brief.\\n\\n[user]\\n{{ text }}')
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '{{ text }}'}]
    """
    starts = [m for m in _HEADER.finditer(text) if m.start() == 0 or text[: m.start()].endswith('\n\n')]
    if not starts or starts[0].start() != 0:
        return None
    messages = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() - 2 if i + 1 < len(starts) else len(text)
        messages.append({'role': match.group(1), 'content': text[match.end() : end]})
    try:
        return check_messages(messages)
    except ValueError:
        return None


@pxt.udf
def render_chat(
    messages: pxt.Json,
    fields: pxt.Json,
    *,
    demos: pxt.Json | None = None,
    labels: pxt.Json | None = None,
    instructions: str = '',
) -> pxt.Json:
    """Chat message templates and input fields (plus demos, labels, instructions) in; rendered messages out."""
    return render_messages(messages, fields, demos=demos or (), labels=labels or (), instructions=instructions)
