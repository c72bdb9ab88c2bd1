"""Fill bench/data/ (git-ignored) with the public label sets the optimization benchmark measures besides the ones
in ../shared/datasets. Where each comes from, its licence and how it is converted: bench/DATA.md.

    python bench/fetch_data.py                 # from GitHub (raw.githubusercontent.com) at the pinned commits
    python bench/fetch_data.py --git DIR ...   # from local git clones or mirrors of the same repositories

Every upstream file is checked against its git blob id at the pinned commit before it is converted (standard
library only) to `bench/data/<name>/data.csv` with the columns `text,label,split` (the upstream split names).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / 'data'

SNIPS_INTENTS = (
    'AddToPlaylist',
    'BookRestaurant',
    'GetWeather',
    'PlayMusic',
    'RateBook',
    'SearchCreativeWork',
    'SearchScreeningEvent',
)
_SNIPS_BLOBS = {
    'AddToPlaylist': ('ce905086b6f7d811903e7ec391367c4f06433c9e', '2b92bb09182bbb253ff8282afa69ac62d1167b90'),
    'BookRestaurant': ('8ae74d3d990ccc6ec30a53e345e3955f5b075ce1', '74c37e372facdff494e0dcb900cef2c9721dde2c'),
    'GetWeather': ('394cdc91c5087f2cb944e5f5d0848d7770d2b78a', '0dceb1a008d7e52c0b51cd4e5d5b23136624b5ca'),
    'PlayMusic': ('e605ffc451904bd67fa4464ca34cdc19a2fe2658', 'd041130c5a4080a45449a357430f01241c3fb593'),
    'RateBook': ('1a2a94acdf0719b16b8823aa8e3b33a87bf08df1', '1bf3c57098d1388387982cab156dfcd281745129'),
    'SearchCreativeWork': ('835aaf745f9d58d1de1649a30b3cb3ef379c9493', 'd9fb087d5be5590db61ae733fa261b541f01f3e6'),
    'SearchScreeningEvent': ('58b2852f9a238d20d57e536224593c43ce745848', '76d0d098b2c33282993bbd8b299d04e88df4cc92'),
}


def _snips_files() -> dict[str, str]:
    files = {}
    for intent, (train, validate) in _SNIPS_BLOBS.items():
        files[f'2017-06-custom-intent-engines/{intent}/train_{intent}.json'] = train
        files[f'2017-06-custom-intent-engines/{intent}/validate_{intent}.json'] = validate
    return files


def _snips_rows(read: Callable[[str], bytes]) -> list[dict[str, str]]:
    """One row per query: its text (the spans of `data` joined), its intent, and `train` or `validate`."""
    rows = []
    for intent in SNIPS_INTENTS:
        for split in ('train', 'validate'):
            path = f'2017-06-custom-intent-engines/{intent}/{split}_{intent}.json'
            for item in json.loads(read(path).decode('utf-8', 'replace'))[intent]:
                text = ''.join(part['text'] for part in item['data']).strip()
                rows.append({'text': ' '.join(text.split()), 'label': intent, 'split': split})
    return rows


def _clinc_rows(read: Callable[[str], bytes]) -> list[dict[str, str]]:
    """One row per in-scope query of the full set: text, intent, and `train`, `val` or `test` (out-of-scope rows,
    which have no intent, are left out)."""
    data = json.loads(read('data/data_full.json'))
    return [
        {'text': text, 'label': label, 'split': split}
        for split in ('train', 'val', 'test')
        for text, label in data[split]
    ]


SOURCES: dict[str, dict[str, Any]] = {
    'snips': {
        'repo': 'sonos/nlu-benchmark',
        'commit': 'b86ac7f1577868c42158d0dec77db50956046696',
        'files': _snips_files(),
        'rows': _snips_rows,
    },
    'clinc150': {
        'repo': 'clinc/oos-eval',
        'commit': '828f8093932c8fe6ca7936c3d2e52903b1c523de',
        'files': {'data/data_full.json': '7a7b26c5f2dfbbf213f3e67d2dd0727e1af545aa'},
        'rows': _clinc_rows,
    },
}


def git_blob_id(data: bytes) -> str:
    """Return the id git gives a file with these bytes (what `git ls-tree` shows)."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _reader(source: dict[str, Any], git_dirs: list[Path]) -> Callable[[str], bytes]:
    repo, commit = source['repo'], source['commit']
    local = next((d for d in git_dirs if _has_commit(d, commit)), None)

    def read(path: str) -> bytes:
        if local is not None:
            data = subprocess.run(
                ['git', f'--git-dir={local}', 'show', f'{commit}:{path}'], check=True, capture_output=True
            ).stdout
        else:
            with urllib.request.urlopen(f'https://raw.githubusercontent.com/{repo}/{commit}/{path}', timeout=60) as r:
                data = r.read()
        if git_blob_id(data) != source['files'][path]:
            raise SystemExit(f'{repo}@{commit[:12]}:{path} is not the pinned file (blob {git_blob_id(data)})')
        return data

    return read


def _has_commit(git_dir: Path, commit: str) -> bool:
    found = subprocess.run(
        ['git', f'--git-dir={git_dir}', 'cat-file', '-e', f'{commit}^{{commit}}'], capture_output=True
    )
    return found.returncode == 0


def _git_dirs(roots: list[str]) -> list[Path]:
    """Return the git directories under the given folders (a clone's .git, a bare repository or a mirror)."""
    dirs = []
    for root in map(Path, roots):
        for candidate in [root, *root.glob('*'), *root.glob('*/*')]:
            if (candidate / 'HEAD').is_file() and (candidate / 'objects').is_dir():
                dirs.append(candidate)
            elif (candidate / '.git' / 'HEAD').is_file():
                dirs.append(candidate / '.git')
    return dirs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--git', nargs='*', default=[], help='folders holding git clones or mirrors to read from')
    parser.add_argument('names', nargs='*', default=list(SOURCES), help=f'which sets: {", ".join(SOURCES)}')
    args = parser.parse_args(argv)
    git_dirs = _git_dirs(args.git)
    for name in args.names:
        source = SOURCES[name]
        rows = source['rows'](_reader(source, git_dirs))
        target = DATA / name / 'data.csv'
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open('w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, fieldnames=['text', 'label', 'split'])
            writer.writeheader()
            writer.writerows(rows)
        labels = len({r['label'] for r in rows})
        print(f'{name}: {len(rows):,} rows, {labels} labels -> {target} ({source["repo"]}@{source["commit"][:12]})')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
