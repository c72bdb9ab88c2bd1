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
    assert row['changelog'] == (log.text or '') and row['effect'].startswith('tiny/dev: +')
    assert 'pw-changelog' in graph.draw() and 'tiny/dev' in graph._repr_html_()
    report = ws.export_report(tiny, [v1, v2], tmp_path / 'report.html', 'dev').read_text()
    assert '<h4>Changelog</h4>' in report and 'pw-changelog' in report
