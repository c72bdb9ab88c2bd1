"""Benchmark: building the comparison of 4 versions on 1,000 rows when every prediction already exists, and the
first render of its grid (every version x every example).

The predictions are made once by a local OpenAI-compatible server that answers instantly (tests/openai_server.py),
so the figure measures the workspace, not a model: evaluation bookkeeping, reads, statistics and rendering.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import pandas as pd
from common import ROOT, SHARED

import workspace as ws
from workspace.analysis.compare import build_comparison
from workspace.analysis.grid import GridFilter, GridQuery, grid_columns, grid_frame, query_grid
from workspace.ui import views
from workspace.ui.widgets import TABS

BANKING = SHARED / 'banking77' / 'train.csv'
N = 1_000


def _rows() -> tuple[pd.DataFrame, str]:
    if BANKING.is_file():
        frame = pd.read_csv(BANKING).sample(n=N, random_state=0).reset_index(drop=True)
        return frame.rename(columns={'category': 'label'}), 'banking77 (1,000 rows sampled from train.csv)'
    tickets = pd.read_csv(ROOT / 'datasets' / 'support_tickets.csv')
    frame = pd.concat([tickets] * (N // len(tickets) + 1)).head(N).reset_index(drop=True)
    frame['text'] = [f'{t} (copy {i})' for i, t in enumerate(frame['text'])]
    return frame.rename(columns={'category': 'label'})[['text', 'label']], 'support_tickets repeated to 1,000 rows'


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def run() -> list[str]:
    sys.path.insert(0, str(ROOT / 'tests'))
    from openai_server import Canned, OpenAICompatibleServer, completion_body

    frame, source = _rows()
    labels = sorted(frame['label'].unique())
    truth = dict(zip(frame['text'], frame['label']))

    def answer(body: dict[str, Any]) -> Canned:
        prompt = body['messages'][-1]['content']
        text = prompt.split('Query: ', 1)[-1].split('\n', 1)[0]
        right = truth.get(text, labels[0])
        # v1 is right on a third of rows, v2 on half, v3 on two thirds, v4 on three quarters: flips to show
        bucket = {'A': 3, 'B': 2, 'C': 3, 'D': 4}[prompt[0]]
        ok = hash(text) % bucket != 0 if prompt[0] in 'CD' else hash(text) % bucket == 0
        return Canned(200, completion_body(right if ok else labels[hash(text) % len(labels)]))

    with OpenAICompatibleServer(answer) as server:
        os.environ['OPENAI_BASE_URL'] = f'{server.url}/v1'
        data = ws.import_dataset(
            'bench_compare', frame, input='text', expected='label', split_ratios={'dev': 1.0}, if_exists='replace'
        )
        v1 = ws.create_version(
            'bench_cmp', template='A\nQuery: {{ text }}\nIntent:', model='openai:instant', output=ws.choice(labels)
        )
        v2 = ws.edit(v1, template='B\nQuery: {{ text }}\nIntent:')
        v3 = ws.edit(v1, template='C\nQuery: {{ text }}\nIntent:')
        v4 = ws.edit(v1, template='D\nQuery: {{ text }}\nIntent:')
        versions = [v1, v2, v3, v4]
        _, fill = _timed(lambda: [ws.evaluate(v, data, progress=False) for v in versions])
        calls_before = len(server.received)
        cmp, build = _timed(lambda: build_comparison(data, versions))
        calls = len(server.received) - calls_before
        renders = {}
        for name, fn in [
            ('summary', views.render_summary),
            ('per category', views.render_per_category),
            ('confusion matrices', views.render_confusions),
        ]:
            _, renders[name] = _timed(lambda fn=fn: fn(cmp))
        _, renders['flips'] = _timed(lambda: views.render_flips(cmp, v3.id))
        # the grid's first render: laid out from the comparison (1,000 rows x 4 versions), then its first page
        columns = grid_columns(cmp, views.short_names(cmp.version_ids))
        frame, renders['grid: lay out 1,000 rows x 4 versions'] = _timed(lambda: grid_frame(cmp))
        _, renders['grid: first page (50 rows)'] = _timed(
            lambda: views.render_grid(query_grid(frame, columns, GridQuery()), cmp)
        )
        query = GridQuery(search='card', sort=f'{v4.id}|pass', filters=(GridFilter('outcome', '=', 'mixed'),))
        _, renders['grid: search, sort and filter, then a page'] = _timed(
            lambda: views.render_grid(query_grid(frame, columns, query), cmp)
        )
        grid_first = renders['grid: lay out 1,000 rows x 4 versions'] + renders['grid: first page (50 rows)']
        _, again = _timed(lambda: build_comparison(data, versions))
        # What a user waits for: from the call to a widget showing its summary, then each tab the first time
        view, widget = _timed(lambda: ws.compare(data, versions))
        _, widget3 = _timed(lambda: ws.compare(data, versions[:3]))  # issue 23's target: 3 versions x 1,000 rows
        tabs = {}
        for index, tab in enumerate(TABS[1:], start=1):  # the summary renders with the widget
            _, tabs[tab] = _timed(lambda index=index: setattr(view.tabs, 'selected_index', index))
        _, flip_page = _timed(lambda: view.next_page.click())
        _, refilter = _timed(lambda: setattr(view.flip_filter, 'value', 'every example'))
        fixed = len(server.received)
        check, checking = _timed(lambda: view.state.check(v1.template.replace('Query:', 'Customer query:')))
        check_calls = len(server.received) - fixed
    return [
        '## Comparison of 4 versions on 1,000 rows (`bench/compare.py`)',
        '',
        f'Data: {source}, {len(labels)} labels; predictions made beforehand by an instant local server '
        f'({fill:.1f} s for 4,000 requests, i.e. {1000 * fill / 4000:.0f} ms of workspace overhead per request).',
        '',
        '| step | wall s |',
        '|---|---:|',
        f'| build the comparison (4 incremental evaluations, reads, paired bootstrap and McNemar for 3 pairs, '
        f'macro-F1 intervals): {calls} model calls | {build:.2f} |',
        f'| the same again (warm) | {again:.2f} |',
        *[f'| render {name} | {seconds:.2f} |' for name, seconds in renders.items()],
        '',
        f'Grid, first render (layout and first page): {grid_first:.2f} s (target: 0.5 s or less).',
        '',
        'From `ws.compare(data, [v1, v2, v3, v4])` to the widget showing its summary, then each tab opened the first '
        'time (panes render when opened; later visits are instant):',
        '',
        '| step | wall s |',
        '|---|---:|',
        f'| `ws.compare(...)` to a rendered widget (comparison, version list, summary pane) | {widget:.2f} |',
        f'| the same for 3 of the versions (target <= 0.5) | {widget3:.2f} |',
        *[f'| first render of the {tab} tab | {seconds:.2f} |' for tab, seconds in tabs.items()],
        f'| next page of flips | {flip_page:.2f} |',
        f'| flips filter changed to every example | {refilter:.2f} |',
        f'| Edit: check an edited template on all {check.total:,} rows (sandbox render, request hashes, store '
        f'lookup; {check.new:,} new requests, {check_calls} model calls) | {checking:.2f} |',
    ]
