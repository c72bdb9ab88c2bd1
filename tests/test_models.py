"""Several models side by side, with cost: the embedded model and models behind a local OpenAI-compatible server,
priced from the maintained tables (zero for local, n/a for a model no table knows), in summaries, comparisons and
scheduled runs."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from workspace import errors
from workspace.jobs.schedule import scheduled_history

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']


@pytest.fixture
def server(ws, tiny_tickets, monkeypatch):
    """An OpenAI-compatible server that answers each ticket's category (11 prompt tokens, 2 completion tokens)."""
    from openai_server import Canned, OpenAICompatibleServer, completion_body

    texts = {row['text']: row['category'] for row in csv.DictReader(tiny_tickets.open())}

    def answer(body):
        text = body['messages'][-1]['content'].split('Ticket: ', 1)[-1].split('\n', 1)[0]
        return Canned(200, completion_body(texts.get(text, 'BILLING'), body['model']))

    with OpenAICompatibleServer(answer) as running:
        monkeypatch.setenv('OPENAI_BASE_URL', f'{running.url}/v1')
        yield running


def test_prices_from_the_maintained_tables():
    from workspace.storage import costs

    assert costs.price('local').cost(1000, 1000) == 0.0
    mini = costs.price('openai:gpt-4o-mini')
    assert mini.source.startswith('genai-prices') and mini.input_per_token == pytest.approx(0.15e-6)
    assert costs.request_cost('openai:gpt-4o-mini', 1_000_000, 1_000_000) == pytest.approx(0.15 + 0.6)
    assert costs.price('groq:llama-3.1-8b-instant').output_per_token > 0
    assert costs.price('openai:my-own-model') is None and costs.request_cost('openai:my-own-model', 5, 5) is None


def test_evaluate_models_side_by_side_with_cost(ws, tiny, server):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    models = ['local', 'openai:gpt-4o-mini', 'openai:my-own-model']
    result = ws.evaluate_models(v1, tiny, models, 'dev')
    table = result.table
    assert list(table['model']) == models and list(table.index)[0] == v1.id
    children = [ws.get_version(v) for v in table.index[1:]]
    assert all(c.parent_id == v1.id and c.template == v1.template and c.meta['model_of'] == v1.id for c in children)

    per_call = 11 * 0.15e-6 + 2 * 0.6e-6
    assert table.loc[v1.id, 'cost_usd'] == 0.0
    assert table.loc[children[0].id, 'cost_per_row_usd'] == pytest.approx(per_call)
    assert table.loc[children[0].id, 'cost_usd'] == pytest.approx(6 * per_call)
    assert pd.isna(table.loc[children[1].id, 'cost_usd'])
    assert table.loc[children[0].id, 'accuracy'] == 1.0 and table.loc[children[0].id, 'mean_tokens'] == 13
    html = result._repr_html_()
    assert 'pw-cost-chart' in html and 'n/a' in html and '$0' in html
    assert result.comparison.baseline == v1.id and len(result.comparison.pairwise) == 2
    assert result.comparison.table.loc[children[0].id, 'cost_usd'] == pytest.approx(6 * per_call)

    # the summary of a run shows its cost; asking again makes no version and no call
    summary = ws.evaluate(children[0], tiny, 'dev', progress=False).summary()
    assert summary.metrics['cost_usd'] == pytest.approx(6 * per_call) and 'cost (USD)' in str(summary)
    assert '$0.0000171' in str(summary)
    sent, versions = len(server.received), len(ws.list_versions('router'))
    again = ws.evaluate_models(v1, tiny, models, 'dev')
    assert len(server.received) == sent and len(ws.list_versions('router')) == versions
    assert list(again.table.index) == list(table.index)
    unknown = ws.evaluate(children[1], tiny, 'dev', progress=False)
    assert 'cost_usd' not in unknown.summary().metrics and 'no price is known' in ' '.join(unknown.summary().notes)
    assert ws.get_run(unknown.run_id).cost_usd is None
    with pytest.raises(errors.ComparisonError, match=r'give the models'):
        ws.evaluate_models(v1, tiny, [])


def test_scheduled_run_records_cost(ws, tiny, server):
    v1 = ws.create_version(
        'router', template='Ticket: {{ text }}\nCategory:', model='openai:gpt-4o-mini', output=ws.choice(LABELS)
    )
    ws.set_label(v1, 'production')
    result = ws.scheduled_eval('router', dataset='tiny', split='dev')
    per_call = 11 * 0.15e-6 + 2 * 0.6e-6
    assert result.cost_usd == pytest.approx(6 * per_call) and 'cost $0.0000171' in str(result)
    history = scheduled_history('router')
    assert history.iloc[0]['cost_usd'] == pytest.approx(6 * per_call)
