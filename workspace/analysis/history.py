"""A prompt's history as a graph: versions, their parents, the optimizer runs that made them, and labels."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd

from workspace.analysis.changelog import changelogs_for, measured_effects
from workspace.core.labels import list_labels
from workspace.core.versions import select_versions
from workspace.storage import tables

__all__ = ['LineageGraph', 'lineage_graph', 'render_lineage_svg']


@dataclass(frozen=True)
class LineageGraph:
    """The versions of one prompt with their parents, origin and labels; displays as a drawing in a notebook."""

    prompt: str
    table: pd.DataFrame

    def _repr_html_(self) -> str:
        described = self.table[(self.table['changelog'] != '') | (self.table['effect'] != '')]
        notes = ''.join(
            f'<li><b>{html.escape(r.version)}</b>: {html.escape(r.changelog)}'
            + (f' <i>({html.escape(r.effect)})</i>' if r.effect else '')
            + '</li>'
            for r in described.itertuples()
        )
        return render_lineage_svg(self) + (f'<ul class="pw-changelogs">{notes}</ul>' if notes else '')

    def draw(self) -> str:
        """Return the graph as an SVG document."""
        return render_lineage_svg(self)


def lineage_graph(prompt: str) -> LineageGraph:
    """Return every version of `prompt` with its parent, depth, how it was made and the labels on it.

    >>> ws.lineage_graph('ticket_router').table
    """
    t = tables.versions()
    versions = select_versions(t.prompt == prompt)
    labels = list_labels(prompt)
    on = {v: sorted(labels.loc[labels['version_id'] == v, 'label']) for v in labels['version_id'].unique()}
    described = changelogs_for([v.id for v in versions])
    depth: dict[str, int] = {}
    rows = []
    for v in versions:  # oldest first: a parent always comes before its children
        depth[v.id] = depth.get(v.parent_id, -1) + 1 if v.parent_id else 0
        optimizer = v.meta.get('optimizer') if isinstance(v.meta, dict) else None
        rows.append(
            {
                'version': v.id,
                'parent': v.parent_id,
                'depth': depth[v.id],
                'made_by': f'optimizer {optimizer}' if optimizer else 'edit' if v.parent_id else 'created',
                'labels': ', '.join(on.get(v.id, [])),
                'created_at': v.created_at,
                'author': v.author,
                'note': v.note,
                'changelog': described.get(v.id, ''),
                'effect': _effect_line(v.id) if v.id in described else '',
            }
        )
    columns = ['version', 'parent', 'depth', 'made_by', 'labels', 'created_at', 'author', 'note', 'changelog', 'effect']
    return LineageGraph(prompt, pd.DataFrame(rows, columns=columns))


def _effect_line(version_id: str) -> str:
    """Return a version's measured effect against its parent in one line: fixed and broken per dataset split."""
    return '; '.join(
        f'{e.dataset}/{e.split or "all"}: +{len(e.fixed)} fixed, -{len(e.broken)} broken'
        for e in measured_effects(version_id)
    )


def render_lineage_svg(graph: LineageGraph) -> str:
    """Draw the graph left to right: one column per generation, an arrow from each parent to its children,
    optimizer-made versions in orange, labels as green tags."""
    if graph.table.empty:
        return f'<p>{html.escape(graph.prompt)} has no versions yet.</p>'
    col_w, row_h, box_w, box_h = 190, 56, 150, 34
    slots: dict[int, int] = {}
    pos: dict[str, tuple[int, int]] = {}
    for row in graph.table.itertuples():
        slot = slots.get(row.depth, 0)
        slots[row.depth] = slot + 1
        pos[row.version] = (20 + row.depth * col_w, 20 + slot * row_h)
    width = 40 + (max(slots) + 1) * col_w
    height = 40 + max(slots.values()) * row_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="pw-lineage" width="{width}" height="{height}" '
        'font-family="system-ui, sans-serif" font-size="11">',
        '<defs><marker id="pw-arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>',
    ]
    for row in graph.table.itertuples():
        if row.parent in pos:
            (px, py), (x, y) = pos[row.parent], pos[row.version]
            parts.append(
                f'<line x1="{px + box_w}" y1="{py + box_h / 2}" x2="{x - 2}" y2="{y + box_h / 2}" '
                'stroke="#888" marker-end="url(#pw-arrow)"/>'
            )
    for row in graph.table.itertuples():
        x, y = pos[row.version]
        fill = '#ffe8cc' if str(row.made_by).startswith('optimizer') else '#e8f0fe'
        name = row.version.split(':', 1)[-1]
        changelog, effect = getattr(row, 'changelog', ''), getattr(row, 'effect', '')
        if changelog or effect:  # a tooltip, and a mark that there is one
            parts.append(f'<g class="pw-changelog"><title>{html.escape(changelog)}\n{html.escape(effect)}</title>')
        parts.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" stroke="#667"/>')
        if changelog or effect:
            parts.append(f'<text x="{x + box_w - 14}" y="{y + 14}" fill="#2563eb">✎</text></g>')
        parts.append(f'<text x="{x + 8}" y="{y + 14}" font-weight="bold">{html.escape(name)}</text>')
        parts.append(f'<text x="{x + 8}" y="{y + 27}" fill="#555">{html.escape(str(row.made_by))[:24]}</text>')
        if row.labels:
            parts.append(f'<text x="{x + 60}" y="{y + 14}" fill="#1a7f37">{html.escape(row.labels)[:20]}</text>')
    parts.append('</svg>')
    return ''.join(parts)
