"""Changelogs with the real embedded model: the description is a stored request (asked again, no call), kept
beside the version, with the measured effect (fixed and broken ids, the paired verdict) on each dataset split
both versions were evaluated on; the lineage graph and the HTML report show both."""

from __future__ import annotations

import pytest
from conftest import model_calls

from workspace import errors
from workspace.analysis import compare
from workspace.analysis.compare import significance
from workspace.analysis.history import lineage_graph

LABELS = ['BILLING', 'DELIVERY', 'TECHNICAL']


def test_changelog_is_a_stored_request_next_to_the_measured_effect(ws, tiny, local, tmp_path):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:', output=ws.choice(LABELS))
    v2 = ws.edit(v1, template='Customer support ticket: {{ text }}\nThe category is:', demos=tiny.demos())
    with pytest.raises(errors.VersionError, match=r'router:v1 has no parent'):
        ws.changelog(v1)
    run1, run2 = ws.evaluate(v1, tiny, 'dev', progress=False), ws.evaluate(v2, tiny, 'dev', progress=False)

    log, calls = model_calls(local, lambda: ws.changelog(v2))
    assert calls == 1 and log.version_id == v2.id and log.parent_id == v1.id and log.model == 'local'
    assert (log.text is not None) != (log.error is not None)
    assert 'template: added "Customer support ticket … The category is", removed "Ticket … Category"' in log.changes
    assert 'demos: 3 added, 0 removed, 0 changed' in log.changes
    [effect] = log.effects
    flips = compare.flips(run1, run2)
    assert (effect.dataset, effect.split, effect.n) == ('tiny', 'dev', 6)
    assert effect.fixed == list(flips.loc[flips['change'] == 'fixed', 'example_id'])
    assert effect.broken == list(flips.loc[flips['change'] == 'broken', 'example_id'])
    assert effect.verdict == significance(run1, run2).verdict and effect.runs == (run1.run_id, run2.run_id)
    assert 'pw-changelog' in log._repr_html_() and 'fixed' in str(log)

    again, calls = model_calls(local, lambda: ws.changelog(v2))
    assert calls == 0 and again.request_hash == log.request_hash and again.text == log.text

    graph = lineage_graph('router')
    row = graph.table.set_index('version').loc[v2.id]
    shown = log.text if log.reliable else f'(unreliable: {log.problems[0]}) {log.text}'  # never as a plain fact
    assert row['changelog'] == (shown or '') and row['effect'].startswith('tiny/dev: +')
    assert 'pw-changelog' in graph.draw() and 'tiny/dev' in graph._repr_html_()
    report = ws.export_report(tiny, [v1, v2], tmp_path / 'report.html', 'dev').read_text()
    assert '<h4>Changelog</h4>' in report and 'pw-changelog' in report


def test_a_changelog_that_contradicts_the_diff_or_the_measured_flips_is_marked_unreliable(scripted_versions, tmp_path):
    from openai_server import Canned, completion_body

    import workspace as ws

    tiny, v1, v2, v3, server = scripted_versions
    for v in (v1, v2, v3):
        ws.evaluate(v, tiny, 'dev', progress=False)  # v1 right on 2 of 6, v2 on all, v3 fails on a5

    server.script.append(
        Canned(200, completion_body('Three billing examples were added and the temperature was raised to 0.7.'))
    )
    copied = ws.changelog(v2)  # the model repeated the prompt's worked example: the diff only changed the first word
    assert not copied.reliable
    assert any('repeats an example of its prompt' in p for p in copied.problems)
    assert 'it mentions a change to the temperature, which the diff does not show' in copied.problems
    assert str(copied).startswith(f'{v2.id} (parent {v1.id}): UNRELIABLE, openai:fake wrote:')
    assert 'Unreliable' in copied._repr_html_() and '<s>' in copied._repr_html_()

    server.script.append(Canned(200, completion_body('The new first line improves accuracy.')))
    claim = ws.changelog(v3)  # v3 broke a5 and fixed nothing
    assert claim.problems == [
        'it says the change improves results, but on tiny/dev it fixed 0 and broke 1 examples (difference -0.167)'
    ]
    graph = lineage_graph('router').table.set_index('version')
    assert graph.loc[v3.id, 'changelog'].startswith('(unreliable: it says the change improves results')
    report = ws.export_report(tiny, [v2, v3], tmp_path / 'report.html', 'dev').read_text()
    assert 'Unreliable' in report

    server.script.append(Canned(200, completion_body('{{ text }}')))  # what the embedded model wrote for a rename
    echoed = ws.changelog(ws.edit(v2, template='v2c\nTicket: {{ text }}\nCategory:'))
    assert echoed.problems == [
        'it is template syntax ({{ text }}), not a description',
        'it has 1 word, too few to describe anything',
    ]

    server.script.append(Canned(200, completion_body('The first line now says v2 instead of v1.')))
    plain = ws.changelog(ws.edit(v2, template='v2b\nTicket: {{ text }}\nCategory:'))
    assert plain.reliable and plain.problems == [] and 'UNRELIABLE' not in str(plain)
