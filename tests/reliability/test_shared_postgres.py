"""A team's setup: a separate PostgreSQL server named by PIXELTABLE_DB_CONNECT_STR. Two processes (two people) import
and evaluate against it; the second reuses every answer the first paid for."""

from __future__ import annotations

from openai_server import Canned, OpenAICompatibleServer, completion_body

TICKETS = {
    'I was charged twice for the same order.': 'BILLING',
    'The parcel has not arrived and tracking has not moved.': 'DELIVERY',
    'The app crashes every time I open my basket.': 'TECHNICAL',
}

EVALUATE = f"""
tickets = {TICKETS!r}
rows = [{{'id': f't{{i}}', 'text': t, 'category': c, 'split': 'dev'}} for i, (t, c) in enumerate(tickets.items())]
data = ws.import_dataset('tickets', rows, input='text', expected='category', split='split', id='id')
version = ws.create_version('router', template='Ticket: {{{{ text }}}}\\nCategory:', model='openai:fake',
                            output=ws.choice(sorted(set(tickets.values()))))
run = ws.evaluate(version, data, split='dev')
summary = run.summary()
print(json.dumps({{'calls': run.calls, 'reused': run.reused, 'accuracy': summary.metrics['accuracy'],
                  'errors': summary.errors}}))
"""


def _answer(body):
    text = body['messages'][-1]['content'].split('Ticket: ', 1)[-1].split('\n', 1)[0]
    return Canned(200, completion_body(TICKETS.get(text, 'BILLING')))


def test_import_and_evaluate_against_a_shared_server(shared_db):
    with OpenAICompatibleServer(_answer) as server:
        env = {'OPENAI_BASE_URL': f'{server.url}/v1', 'WORKSPACE_MAX_ATTEMPTS': '1'}
        first = shared_db.run(EVALUATE, **env)
        second = shared_db.run(EVALUATE, **env)  # another process, as a colleague on another machine would
    assert first == {'calls': 3, 'reused': 0, 'accuracy': 1.0, 'errors': 0}
    assert second == {'calls': 0, 'reused': 3, 'accuracy': 1.0, 'errors': 0}
    assert len(server.received) == 3
    assert any(name.startswith('tbl_') for name in shared_db.tables()), 'the rows live in the shared database'
    assert not (shared_db.home / 'pgdata').exists(), 'no embedded server was started'
