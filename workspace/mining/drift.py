"""Drift of a prompt family over time windows: its share of traffic, its slot values, and where its inputs sit.

Each window (a day or a week) is compared with the window before it (the centre: with the windows before it), on
three statistics:

- share: the family's log lines over all log lines in the window; flagged when it changes by half or more
  (x1.5 or /1.5) and a chi-square test of the two windows' counts gives p < 0.001, and the next window, against the
  same window before, shows it too (x1.22 or /1.22, the square root, with p < 0.05). Both windows must lie within
  the family's life: a window in which its first line came has a share of part of a window (a new template, an
  edit not yet recorded as a version appears; its first seen says so), and so has the window in which its last
  line came while the log goes on after it (a template retired, or edited into another family; its last seen
  says so). Neither is drift of the traffic the template gets; nor is a fall that families of its application
  first seen since the window before took over (its prompts changed, an edit not recorded as a version): it is
  noted in the window's reasons with those families;
- slots: for each enum slot (and integer or number slot, in five bins of the earlier window's quantiles), the
  Jensen-Shannon distance (base 2, scipy) between the two windows' value distributions; flagged when one is >= 0.2
  and a chi-square test gives p < 0.001;
- centre: the slot values (all slots of a prompt joined) of the distinct prompts the family sent in the window,
  embedded by the project's embedder, against those it sent in each of the windows before (up to four, since its
  last flagged shift). The shift is the mean similarity of pairs of different prompts within the window, plus
  within the baseline, minus twice across the two: an unbiased estimate of the squared distance between the two
  mean vectors (a linear-kernel MMD, Gretton et al. 2012), zero on average when nothing moved. It is compared with
  the same statistic for the prompts shuffled between the two (2,000 times): flagged when it is CENTRE_TIMES
  times the median size of the shuffled ones and larger than all but 0.1% of them (p < 0.001), and the next window
  shows it too against the same baseline (half that size, p < 0.05): drift lasts, a shift by chance does not. A
  shift of one window only is noted in its reasons, and one in the last window waits for the next. The window in
  which an edit of the template began (merged as its next version) is not tested, and the windows after it are
  compared with windows of the edited wording only: an edit can change how the inputs render in the slots (a
  loop's separators). Slot values rather
  than whole prompts, so that an edit of the template's constant text (recorded as a template event) is not taken
  for drift of what flows through it; the prompts sent in the window rather than those first seen in it, so that
  inputs drawn from a narrower pool, which repeat prompts sent before, still count. (The plain distance between
  two means of a few dozen vectors is far from zero by chance: a real narrowing showed as 1.5 times the shuffled
  distance against 1.0 to 1.3 on stable weeks. Its unbiased square measures the shift above that floor: 9 to 13
  times against at most 7 on the prompt collections' stable weeks.)

A window with fewer than 20 new members on either side (for the centre: 20 prompts sent in it, or in the windows
before) is not tested. The figures are in docs/families.md and docs/benchmarks.md ("Prompt families").
"""

from __future__ import annotations

import base64
import collections
import functools
import html
import io
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from workspace.display.formats import p_phrase, percent
from workspace.display.frames import shown
from workspace.errors import FamilyError
from workspace.mining.assign import EDIT_NOTE
from workspace.mining.families import Family, get_family
from workspace.storage import tables
from workspace.storage.embeddings import embed

__all__ = ['DriftReport', 'drift', 'render_drift']

Window = Literal['day', 'week']
MIN_MEMBERS = 20
P_VALUE = 0.001
SHARE_RATIO = 1.5
JS_FLAG = 0.2
CENTRE_TIMES = 8.0  # a centre shift is flagged at this many times the size of shuffled windows' (chosen on seed 1)
CENTRE_BASELINE = 4  # windows the centre is compared with (since its last flagged shift)
PERMUTATIONS = 2000  # shuffles behind the centre shift's p-value (so that it can reach P_VALUE)
CONFIRM_P = 0.05  # the next window confirms a change at half its flag level and this p (chosen on seeds 1, 3, 4)


@dataclass(frozen=True)
class DriftReport:
    """A family's drift per window: one row per window with its statistics, flags and reasons."""

    family_id: str
    window: Window
    table: pd.DataFrame

    @property
    def flagged(self) -> pd.DataFrame:
        """Return the windows where a statistic crossed its threshold."""
        return self.table[self.table['flag']]

    def __repr__(self) -> str:
        flagged = ', '.join(f'{w:%Y-%m-%d} ({r})' for w, r in zip(self.flagged['window'], self.flagged['reasons']))
        return (
            f'<DriftReport {self.family_id} by {self.window}: {len(self.table)} windows; flagged: {flagged or "none"}>'
        )

    def _repr_html_(self) -> str:
        return render_drift(self)


def _window_start(at: pd.Series, window: Window) -> pd.Series:
    day = at.dt.tz_convert('UTC').dt.floor('D')
    return day - pd.to_timedelta(day.dt.weekday, unit='D') if window == 'week' else day


def _bins(reference: list[float], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    edges = np.unique(np.quantile(reference, [0.2, 0.4, 0.6, 0.8]))
    return np.bincount(np.searchsorted(edges, reference), minlength=len(edges) + 1), np.bincount(
        np.searchsorted(edges, values), minlength=len(edges) + 1
    )


def _slot_js(before: list[dict], after: list[dict], slots: list[Any]) -> tuple[float, str | None, float]:
    """Return the largest Jensen-Shannon distance over the testable slots, its slot, and its chi-square p-value."""
    best: tuple[float, str | None, float] = (0.0, None, 1.0)
    for slot in slots:
        a = [m[slot.name] for m in before if m.get(slot.name) is not None]
        b = [m[slot.name] for m in after if m.get(slot.name) is not None]
        if len(a) < MIN_MEMBERS or len(b) < MIN_MEMBERS:
            continue
        if slot.type == 'enum':
            keys = sorted(set(a) | set(b))
            ca = np.array([a.count(k) for k in keys], dtype=float)
            cb = np.array([b.count(k) for k in keys], dtype=float)
        elif slot.type in ('integer', 'number'):
            try:
                fa = [float(v.replace(',', '')) for v in a]
                fb = [float(v.replace(',', '')) for v in b]
            except ValueError:
                continue
            ca, cb = (x.astype(float) for x in _bins(fa, fb))
        else:
            continue
        keep = (ca + cb) > 0
        ca, cb = ca[keep], cb[keep]
        if len(ca) < 2:
            continue
        distance = float(jensenshannon(ca / ca.sum(), cb / cb.sum(), base=2))
        p = float(stats.chi2_contingency(np.vstack([ca, cb]))[1])
        if distance > best[0]:
            best = (distance, slot.name, p)
    return best


def _centre(before: np.ndarray, after: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Return the distance between the windows' mean vectors (unit vectors, rows of `before` and `after`; equal
    rows are one prompt sent in several windows), how many times the size of the shuffled windows' the shift is
    (the median absolute value over PERMUTATIONS shuffles), and the permutation p-value.

    The distance between two means of a few dozen embedded texts is far from zero by chance alone (about 0.1 on
    stable weeks), so the shift is measured as the mean similarity of pairs of different prompts within `after`,
    plus within `before`, minus twice across: an unbiased estimate of the squared distance between the means
    (a linear-kernel MMD, Gretton et al. 2012) whose mean is zero when nothing moved. A prompt paired with itself
    is left out wherever its copies fall: counted, a prompt sent again in the window would pull the window away
    from a baseline that holds it too (shuffled, its copies fall together and look alike), and a narrowing to
    prompts sent before would look like no change. Hand-written: scipy has no multivariate two-sample test, and
    this one is a few dot products per shuffle.
    """
    vectors = np.vstack([before, after]).astype(np.float64)
    n, m = len(before), len(after)
    _, group = np.unique(vectors, axis=0, return_inverse=True)
    group = group.ravel()
    groups = int(group.max()) + 1
    total = vectors.sum(axis=0)
    total_count = np.bincount(group, minlength=groups).astype(np.float64)

    def shift(rows: np.ndarray) -> float:
        sum_a, count_a = vectors[rows].sum(axis=0), np.bincount(group[rows], minlength=groups).astype(np.float64)
        sum_b, count_b = total - sum_a, total_count - count_a
        same_a, same_b, same_ab = count_a @ count_a, count_b @ count_b, count_a @ count_b
        within_a = (sum_a @ sum_a - same_a) / max(m * m - same_a, 1.0)
        within_b = (sum_b @ sum_b - same_b) / max(n * n - same_b, 1.0)
        across = (sum_a @ sum_b - same_ab) / max(n * m - same_ab, 1.0)
        return float(within_a + within_b - 2 * across)

    observed = shift(np.arange(n, n + m))
    rng = np.random.default_rng(seed)
    shuffled = np.array([shift(rng.permutation(n + m)[:m]) for _ in range(PERMUTATIONS)])
    p = float((1 + np.sum(shuffled >= observed)) / (1 + PERMUTATIONS))
    distance = float(np.linalg.norm(vectors[n:].mean(axis=0) - vectors[:n].mean(axis=0)))
    return distance, observed / max(float(np.median(np.abs(shuffled))), 1e-12), p


def _edit_starts(family_id: str, members: pd.DataFrame) -> list[pd.Timestamp]:
    """Return when each edit of the family's template merged into it began: the first prompt of the edited wording
    (it was a family of its own, a candidate edit, until it was merged)."""
    h = tables.family_history()
    rows = h.where((h.family_id == family_id) & (h.action == 'merge')).select(h.other_id, h.note).collect()
    edits = {r['other_id'] for r in rows if r['note'] == EDIT_NOTE}
    if not edits:
        return []
    came_from = members['reason'].map(lambda r: r.get('assigned_to') if isinstance(r, dict) else None)
    first = pd.to_datetime(members['first_seen'], utc=True)
    return [first[came_from == e].min() for e in sorted(edits) if (came_from == e).any()]


def _app_families(family_id: str) -> dict[str, Any]:
    """Return the other families of a family's application: when each was first seen, and each prompt's family."""
    raw = tables.raw_prompts()
    apps = [r['app'] for r in raw.where(raw.family_id == family_id).select(raw.app).limit(1).collect()]
    app = apps[0] if apps else None
    same_app = raw.app == app if app is not None else raw.app == None  # noqa: E711 (Pixeltable's IS NULL)
    rows = raw.where(same_app & (raw.family_id != family_id)).select(raw.prompt_hash, raw.family_id, raw.first_seen)
    family_of: dict[str, str] = {}
    first: dict[str, pd.Timestamp] = {}
    for r in rows.collect():
        family_of[r['prompt_hash']] = r['family_id']
        at = pd.Timestamp(r['first_seen'])
        at = at.tz_localize('UTC') if at.tzinfo is None else at.tz_convert('UTC')
        first[r['family_id']] = min(first.get(r['family_id'], at), at)
    return {'family_of': family_of, 'hashes': set(family_of), 'first': first}


class _Windows:
    """What `drift` reads once for a family: its log lines by window, its life, its template edits, the other
    families of its application, and the embedded slot values of the prompts it sent in each window."""

    def __init__(self, fam: Family, members: pd.DataFrame, window: Window) -> None:
        occ = tables.prompt_occurrences()
        lines = pd.DataFrame(list(occ.select(occ.prompt_hash, occ.at).collect()), columns=['prompt_hash', 'at'])
        lines['at'] = pd.to_datetime(lines['at'], utc=True)
        lines['window'] = _window_start(lines['at'], window)
        lines['ours'] = lines['prompt_hash'].isin(set(members['prompt_hash']))
        life = lines.loc[lines['ours'], 'at']
        self.lines, self.first_line, self.last_line, self.log_end = lines, life.min(), life.max(), lines['at'].max()
        self.length = pd.Timedelta(days=7 if window == 'week' else 1)
        self.traffic = lines.groupby('window').agg(total=('ours', 'size'), family=('ours', 'sum'))
        self.family_id = fam.id
        self.edits = _edit_starts(fam.id, members)
        # the centre's inputs: the distinct prompts the family sent in each window (a prompt sent again counts again
        # in a later window), each embedded once
        values = {
            h: '\n'.join(v.values()) for h, v in zip(members['prompt_hash'], members['slots']) if isinstance(v, dict)
        }
        ours = lines[lines['ours'] & lines['prompt_hash'].isin(values)]
        self.sent_in = ours.groupby('window')['prompt_hash'].unique()
        order = sorted(values)
        self.vectors = dict(zip(order, embed([values[h] for h in order]))) if order else {}

    def lived(self, start: pd.Timestamp) -> bool:
        """Return whether the family sent prompts through the whole window: it did not appear in it, nor stop in it
        while the log goes on after it (a window the log's end cuts short is cut for every family alike)."""
        end = start + self.length
        return bool(self.first_line <= start and (self.last_line >= end or end > self.log_end))

    def edited(self, start: pd.Timestamp) -> bool:
        """Return whether an edit of the family's template began in the window."""
        return any(start <= e < start + self.length for e in self.edits)

    def sent(self, start: pd.Timestamp | None) -> list[str]:
        return sorted(self.sent_in.get(start, ())) if start is not None else []

    @functools.cached_property
    def siblings(self) -> dict[str, Any]:
        # read only when the share falls: the other families of the application
        return _app_families(self.family_id)

    def newcomers(self, before: pd.Timestamp, start: pd.Timestamp) -> dict[str, int]:
        """Return the families of its application first seen since the window `before`, with their lines in this
        window."""
        new = {f for f, first in self.siblings['first'].items() if before <= first < start + self.length}
        if not new:
            return {}
        lines = self.lines
        here = lines[(lines['window'] == start) & lines['prompt_hash'].isin(self.siblings['hashes'])]
        counts = here['prompt_hash'].map(self.siblings['family_of']).value_counts()
        return {f: int(counts.get(f, 0)) for f in new if counts.get(f, 0)}

    def share(self, row: dict[str, Any], start: Any, base: tuple, following: Any) -> tuple[list[str], list[str], bool]:
        """Test the window's share against the window `base` (start, share, lines, all lines); return the reasons,
        the notes, and whether the change was of this window only (a burst: the next window is compared with `base`)."""
        counts = self.traffic.loc[start]
        share = counts['family'] / counts['total'] if counts['total'] else 0.0
        old_start, old_share, old_family, old_total = base
        table = [[counts['family'], counts['total'] - counts['family']], [old_family, old_total - old_family]]
        if not (old_family > 0 and self.lived(old_start) and self.lived(start)):
            return [], [], False
        # a log with this family alone has a share of 100% in every window: nothing to test
        row['share_p'] = float(stats.chi2_contingency(table)[1]) if table[0][1] + table[1][1] else 1.0
        ratio = (share + 1e-9) / (old_share + 1e-9)
        if not ((ratio >= SHARE_RATIO or ratio <= 1 / SHARE_RATIO) and row['share_p'] < P_VALUE):
            return [], [], False
        said = f'share {percent(old_share)} -> {percent(share)} ({p_phrase(row["share_p"])})'
        taken = self.newcomers(old_start, start) if ratio < 1 else {}
        if taken and sum(taken.values()) >= old_share * counts['total'] - counts['family']:
            # its traffic went to families of its application that appeared meanwhile: its template's prompts
            # changed (an edit not recorded as a version), not the traffic it gets
            top = sorted(taken, key=lambda f: (-taken[f], f))
            more = f' and {len(top) - 3} more' if len(top) > 3 else ''
            return [], [f'{said}; taken over by {", ".join(top[:3])}{more}, new since the window before'], False
        if following is None or not self.lived(following):
            return [], [f'{said}; to be confirmed by the next window'], False
        # a change of traffic lasts: the next window, against the same window before, shows it too
        later = self.traffic.loc[following]
        kept_share = later['family'] / later['total'] if later['total'] else 0.0
        kept = (kept_share + 1e-9) / (old_share + 1e-9)
        pair = [[later['family'], later['total'] - later['family']], table[1]]
        kept_p = float(stats.chi2_contingency(pair)[1]) if pair[0][1] + pair[1][1] else 1.0
        lasting = kept >= SHARE_RATIO**0.5 if ratio > 1 else kept <= SHARE_RATIO**-0.5
        if lasting and kept_p < CONFIRM_P:
            return [f'{said}, and {percent(kept_share)} in the next window ({p_phrase(kept_p)})'], [], False
        return [], [f'{said} in this window only (the next: {percent(kept_share)})'], True

    def centre(
        self, row: dict[str, Any], baseline: list[str], sent: list[str], after: list[str]
    ) -> tuple[list[str], list[str]]:
        """Test the centre of what the window sent against `baseline` (the prompts the windows before sent), the
        window `after` confirming; return the reasons (a flag: the baseline starts again) and the notes."""
        if len(baseline) < MIN_MEMBERS or len(sent) < MIN_MEMBERS:
            return [], []
        before = np.array([self.vectors[h] for h in baseline])
        shift, times, p = _centre(before, np.array([self.vectors[h] for h in sent]))
        row.update(centre_shift=shift, centre_noise=times, centre_p=p)
        if not (times >= CENTRE_TIMES and p < P_VALUE):
            return [], []
        # a shift by chance does not last: the next window, against the same baseline, must show it too
        said = f"centre shift {shift:.3f}, {times:.1f} times the shuffled windows' ({p_phrase(p)})"
        if len(after) < MIN_MEMBERS:
            return [], [f'{said}; to be confirmed by the next window']
        _, kept, kept_p = _centre(before, np.array([self.vectors[h] for h in after]))
        row['centre_next'] = kept
        if kept >= CENTRE_TIMES / 2 and kept_p < CONFIRM_P:
            return [f'{said}, and {kept:.1f} times in the next window ({p_phrase(kept_p)})'], []
        return [], [f'{said} in this window only (the next: {kept:.1f} times)']


def drift(family: Family | str, *, window: Window = 'week') -> DriftReport:
    """Return a family's traffic share, slot value distributions and centre per window, each window compared
    with the one before, with a flag where a statistic crosses its threshold (see the module docstring).

    >>> report = ws.drift('fam-3f2a9c01de', window='week')
    >>> report.flagged
    """
    if window not in ('day', 'week'):
        raise FamilyError(f"window {window!r} is not one of 'day', 'week'")
    fam = get_family(family)
    members = fam.members()
    if members.empty:
        raise FamilyError(f'family {fam.id!r} has no members')
    w = _Windows(fam, members, window)
    members['window'] = _window_start(pd.to_datetime(members['first_seen'], utc=True), window)
    slots = list(fam.template.slots) if fam.template is not None else []
    rows = []
    before: list[dict] | None = None  # the members first seen in the window before (the slots' test)
    base: tuple | None = None  # the window the share is compared with: the one before, or before a burst
    # the centre's baseline: the distinct prompts sent in each of up to CENTRE_BASELINE windows before, since its
    # last flagged shift (a prompt sent in several of them counts in each)
    earlier: collections.deque[list[str]] = collections.deque(maxlen=CENTRE_BASELINE)
    starts = list(w.traffic.index)
    for i, (start, counts) in enumerate(w.traffic.iterrows()):
        parsed = [s for s in members.loc[members['window'] == start, 'slots'] if isinstance(s, dict)]
        following = starts[i + 1] if i + 1 < len(starts) else None
        sent = w.sent(start)
        share = counts['family'] / counts['total'] if counts['total'] else 0.0
        row: dict[str, Any] = {'window': start, 'traffic': int(counts['family']), 'share': share,
                               'new_members': int((members['window'] == start).sum()),
                               'prompts_sent': len(sent), 'share_p': None, 'slot_js': None, 'slot': None,
                               'slot_p': None, 'centre_shift': None, 'centre_noise': None, 'centre_p': None,
                               'centre_next': None}  # fmt: skip
        reasons: list[str] = []
        notes: list[str] = []  # what is not (yet) a flag
        burst = False
        if base is not None and before is not None:
            reasons, notes, burst = w.share(row, start, base, following)
            if len(before) >= MIN_MEMBERS and len(parsed) >= MIN_MEMBERS:
                js, slot, p = _slot_js(before, parsed, slots)
                row.update(slot_js=js, slot=slot, slot_p=p)
                if js >= JS_FLAG and p < P_VALUE:
                    reasons.append(f'slot {slot!r} JS distance {js:.2f} ({p_phrase(p)})')
            if w.edited(start):
                # the template's wording changed in this window, and with it how its inputs render in the slots
                # (a loop's separators): the centre starts again from the next window
                earlier.clear()
            else:
                after = w.sent(following) if following is not None and not w.edited(following) else []
                flagged, noted = w.centre(row, [h for hashes in earlier for h in hashes], sent, after)
                reasons, notes = reasons + flagged, notes + noted
                if flagged:
                    earlier.clear()
        row['flag'] = bool(reasons)
        row['reasons'] = '; '.join(reasons + notes)
        rows.append(row)
        before = parsed
        if not burst:  # a share that changed for this window only: the next window is compared with the one before
            base = (start, share, int(counts['family']), int(counts['total']))
        if not w.edited(start):
            earlier.append(sent)
    return DriftReport(fam.id, window, pd.DataFrame(rows))


def render_drift(report: DriftReport) -> str:
    """Render a drift report as HTML: a chart of share, slot JS distance and centre shift per window (flagged
    windows marked), and the table."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    t = report.table
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    series = [('share', 'share of traffic', None), ('slot_js', 'slot JS distance', JS_FLAG),
              ('centre_noise', 'centre shift (x shuffled)', CENTRE_TIMES)]  # fmt: skip
    for ax, (column, label, threshold) in zip(axes, series):
        values = pd.to_numeric(t[column], errors='coerce')
        ax.plot(t['window'], values, marker='o')
        if threshold is not None:
            ax.axhline(threshold, color='#c62828', linestyle='--', linewidth=1)
        for when in t.loc[t['flag'], 'window']:
            ax.axvspan(when, when + pd.Timedelta(days=7 if report.window == 'week' else 1), color='#ffcc80', alpha=0.4)
        ax.set_ylabel(label, fontsize=8)
    axes[0].set_title(f'{report.family_id}: drift by {report.window} (flagged windows shaded)')
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    chart = base64.b64encode(buffer.getvalue()).decode()
    table = shown(
        t.assign(window=t['window'].dt.strftime('%Y-%m-%d')),
        {'share_p': 'p', 'slot_p': 'p', 'centre_p': 'p', 'slot_js': 'score', 'centre_shift': 'score'},
    )
    return (
        f'<div class="pw-view pw-drift"><img class="pw-chart" alt="{html.escape(report.family_id)} drift" '
        f'src="data:image/png;base64,{chart}"/>{table._repr_html_()}</div>'
    )
