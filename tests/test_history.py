"""A prompt's lineage graph: versions with parents, how each was made, labels; drawn as SVG."""

from __future__ import annotations

from workspace.analysis.history import lineage_graph


def test_lineage_graph_table_and_drawing(ws):
    v1 = ws.create_version('router', template='Ticket: {{ text }}\nCategory:')
    v2 = ws.edit(v1, template='T: {{ text }}')
    v3 = ws.edit(v1, template='Support ticket: {{ text }}', meta={'optimizer': 'bootstrap_random_search'})
    v4 = ws.edit(v3, template='Support ticket text: {{ text }}')
    ws.set_label(v3, 'production')
    ws.set_label(v2, 'staging')
    graph = lineage_graph('router')
    table = graph.table.set_index('version')
    assert list(table.index) == [v1.id, v2.id, v3.id, v4.id]
    assert list(table['parent'].fillna('-')) == ['-', v1.id, v1.id, v3.id]
    assert list(table['depth']) == [0, 1, 1, 2]
    assert list(table['made_by']) == ['created', 'edit', 'optimizer bootstrap_random_search', 'edit']
    assert table.loc[v3.id, 'labels'] == 'production' and table.loc[v2.id, 'labels'] == 'staging'
    svg = graph.draw()
    assert svg.startswith('<svg') and svg.count('<rect') == 4 and svg.count('<line') == 3
    assert 'production' in svg and '#ffe8cc' in svg  # the optimizer-made version stands out
    assert graph._repr_html_() == svg


def test_lineage_graph_of_unknown_prompt_is_empty(ws):
    graph = lineage_graph('nothing')
    assert graph.table.empty and 'has no versions yet' in graph.draw()


def test_diff_and_report(scripted_versions, tmp_path):
    import workspace as ws

    tiny, v1, v2, v3, _ = scripted_versions
    d = ws.diff(v1.id, 'router:v2')
    assert d.changed and '<ins' in d._repr_html_()
    assert str(d).startswith('--- router:v1/template\n+++ router:v2/template')
    ws.set_label(v2, 'production')
    path = ws.export_report(tiny, [v1, v2], tmp_path / 'reports' / 'v2.html', 'dev')
    text = path.read_text()
    assert text.startswith('<!DOCTYPE html>') and 'router:v2 against router:v1' in text and 'pw-chart' in text
    assert 'pw-tag-label">@production' in text  # labels beside the versions
