"""Extract the human-written templates (and, for Natural Instructions v1, the prompts GPT-3 was sent) that the prompt
collections are rendered from, out of local clones of their public repositories, into the JSON files next to this
script. Run once by hand; the JSON files are what the repository keeps (README.md gives provenance and licences).

    python datasets/prompt_collections/extract.py --promptsource ~/src/promptsource --flan ~/src/FLAN \
        --ni-v1 ~/src/natural-instructions-v1

Nothing here renders a prompt: `make_collections.py` does, with inputs from `../shared/datasets` read at run time.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

# --- promptsource -------------------------------------------------------------------------------------------------

#: The four datasets whose templates become applications, with the input field each template reads.
PROMPTSOURCE_APPS = {
    'banking77': 'banking77',
    'poem_sentiment': 'poem_sentiment',
    'e2e_nlg_cleaned': 'e2e_nlg',
    'scitldr/Abstract': 'scitldr',
}
#: Templates of other datasets, each rendered once in one application with that application's input: one-offs.
#: (dataset, its one text field, the application whose input fills it)
PROMPTSOURCE_ONE_OFF_SOURCES = [
    ('imdb', 'text', 'poem_sentiment'),
    ('rotten_tomatoes', 'text', 'poem_sentiment'),
    ('yelp_polarity', 'text', 'poem_sentiment'),
    ('emotion', 'text', 'poem_sentiment'),
    ('financial_phrasebank/sentences_allagree', 'sentence', 'poem_sentiment'),
    ('xsum', 'document', 'scitldr'),
    ('multi_news', 'document', 'scitldr'),
    ('samsum', 'dialogue', 'scitldr'),
    ('cnn_dailymail/3.0.0', 'article', 'scitldr'),
    ('snips_built_in_intents', 'text', 'banking77'),
    ('trec', 'text', 'banking77'),
    ('ag_news', 'text', 'banking77'),
    ('common_gen', 'concepts', 'e2e_nlg'),
]


class _Loader(yaml.SafeLoader):
    """promptsource's YAML tags (!Template, !TemplateMetadata) read as plain mappings."""


_Loader.add_multi_constructor('!', lambda loader, suffix, node: loader.construct_mapping(node, deep=True))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(['git', '-C', str(repo), *args], capture_output=True, text=True, check=True).stdout


def _yaml_at(repo: Path, commit: str, path: str) -> dict[str, Any]:
    return yaml.load(_git(repo, 'show', f'{commit}:{path}'), Loader=_Loader)


def _choices(template: dict[str, Any]) -> list[str] | None:
    choices = template.get('answer_choices')
    if isinstance(choices, list):  # early releases kept the choices as a YAML list
        return [str(c).strip() for c in choices]
    return [c.strip() for c in choices.split('|||')] if choices else None


def promptsource(repo: Path) -> dict[str, Any]:
    import jinja2
    import jinja2.meta

    env = jinja2.Environment()
    head = _git(repo, 'rev-parse', 'HEAD').strip()
    apps: dict[str, Any] = {}
    for dataset, app in PROMPTSOURCE_APPS.items():
        path = f'promptsource/templates/{dataset}/templates.yaml'
        history: dict[str, list[dict[str, Any]]] = {}
        for line in reversed(_git(repo, 'log', '--format=%H %cs', '--', path).split('\n')):
            if not line:
                continue
            commit, date = line.split()
            for tid, t in _yaml_at(repo, commit, path)['templates'].items():
                versions = history.setdefault(tid, [])
                if not versions or versions[-1]['jinja'] != t['jinja']:
                    versions.append(
                        {
                            'commit': commit,
                            'date': date,
                            'name': t['name'],
                            'jinja': t['jinja'],
                            'answer_choices': _choices(t),
                        }
                    )
        current = _yaml_at(repo, head, path)['templates']
        apps[app] = {
            'dataset': dataset,
            'path': path,
            'templates': [
                {
                    'id': tid,
                    'name': t['name'],
                    'jinja': t['jinja'],
                    'answer_choices': _choices(t),
                    'history': history[tid],
                }
                for tid, t in current.items()
            ],
        }
    one_offs = []
    for dataset, field, app in PROMPTSOURCE_ONE_OFF_SOURCES:
        path = f'promptsource/templates/{dataset}/templates.yaml'
        for tid, t in _yaml_at(repo, head, path)['templates'].items():
            prompt = t['jinja'].split('|||')[0]
            try:
                variables = jinja2.meta.find_undeclared_variables(env.parse(prompt)) - {'answer_choices'}
            except jinja2.TemplateSyntaxError:
                continue
            if variables == {field}:
                one_offs.append(
                    {'dataset': dataset, 'path': path, 'id': tid, 'name': t['name'], 'field': field, 'app': app,
                     'jinja': t['jinja'], 'answer_choices': _choices(t)}
                )  # fmt: skip
    return {'repository': 'bigscience-workshop/promptsource', 'commit': head, 'license': 'Apache-2.0',
            'apps': apps, 'one_offs': one_offs}  # fmt: skip


# --- FLAN ---------------------------------------------------------------------------------------------------------

#: FLAN task -> the application whose input fills it (in `make_collections.py`).
FLAN_TASKS = ['imdb_reviews', 'e2e_nlg', 'xsum', 'fix_punct', 'true_case', 'trec']
FLAN_ONE_OFF_TASKS = ['sst2', 'yelp_polarity_reviews', 'sentiment140', 'gigaword', 'samsum', 'aeslc', 'multi_news',
                      'dart', 'web_nlg_en', 'word_segment', 'ag_news_subset']  # fmt: skip


def _patterns(source: str) -> dict[str, list[list[str]]]:
    """Return the PATTERNS dict literal of a FLAN templates module, read with ast (nothing is executed)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == 'PATTERNS' for t in node.targets):
            return {k: [list(p) for p in v] for k, v in ast.literal_eval(node.value).items()}
    raise ValueError('no PATTERNS dict')


def flan(repo: Path) -> dict[str, Any]:
    head = _git(repo, 'rev-parse', 'HEAD').strip()
    v1 = _patterns(_git(repo, 'show', f'{head}:flan/templates.py'))
    v2 = _patterns(_git(repo, 'show', f'{head}:flan/v2/templates.py'))
    wanted = FLAN_TASKS + FLAN_ONE_OFF_TASKS
    return {
        'repository': 'google-research/FLAN',
        'commit': head,
        'license': 'Apache-2.0',
        'files': {'v1': 'flan/templates.py', 'v2': 'flan/v2/templates.py'},
        'options_format': 'OPTIONS:\\n- <option>\\n- <option> (flan/preprocessors.py, format_options)',
        'v1': {k: v1[k] for k in wanted if k in v1},
        'v2': {k: v2[k] for k in wanted if k in v2},
    }


# --- Natural Instructions v1: the prompts sent to GPT-3 -----------------------------------------------------------

#: Tasks kept (their instance inputs have a fixed field layout), and for each the encodings used as templates.
NI_TASKS = [
    'subtask002_quoref_answer_generation',
    'subtask003_mctaco_question_generation_event_duration',
    'subtask005_mctaco_wrong_answer_generation_event_duration',
    'subtask008_mctaco_wrong_answer_generation_transient_stationary',
    'subtask022_cosmosqa_passage_inappropriate_binary',
    'subtask033_winogrande_answer_generation',
    'subtask034_winogrande_question_modification_object',
    'subtask039_qasc_find_overlapping_words',
    'subtask040_qasc_question_generation',
    'subtask052_multirc_identify_bad_question',
]
NI_MAX_INSTRUCTION = 7000  # leave out the encodings with dozens of examples (8 KB of instructions per prompt)


def ni_v1(repo: Path) -> dict[str, Any]:
    """Split every prompt of the kept tasks into its encoding's instruction and the instance input; check that
    instruction + '\\ninput: ' + input + '\\noutput:' gives the prompt back exactly."""
    head = _git(repo, 'rev-parse', 'HEAD').strip()
    files = _git(repo, 'ls-tree', '-r', '--name-only', head, 'predictions/gpt3_outputs').split('\n')
    tasks: dict[str, Any] = {}
    for f in files:
        name = f.split('/')[-1]
        task, _, encoding = name.partition('@')
        if task not in NI_TASKS:
            continue
        predictions = json.loads(_git(repo, 'show', f'{head}:{f}'))['predictions']
        entry = tasks.setdefault(task, {'inputs': {}, 'encodings': {}})
        instructions = set()
        for p in predictions:
            prompt = p['input']
            cut = prompt.rfind('\ninput: ')
            instruction, value = prompt[:cut], prompt[cut + len('\ninput: ') : -len('\noutput:')]
            if instruction + '\ninput: ' + value + '\noutput:' != prompt:
                raise ValueError(f'{f}: a prompt does not split into instruction and input')
            instructions.add(instruction)
            entry['inputs'].setdefault(str(p['index']), value)
            if entry['inputs'][str(p['index'])] != value:
                raise ValueError(f'{f}: instance {p["index"]} has another input than in other encodings')
        (instruction,) = instructions
        if len(instruction) <= NI_MAX_INSTRUCTION:
            entry['encodings'][encoding.removesuffix('.json')] = {'file': f, 'instruction': instruction}
    return {'repository': 'allenai/natural-instructions-v1', 'commit': head, 'license': 'Apache-2.0',
            'format': '<instruction>\\ninput: <instance input>\\noutput:', 'tasks': tasks}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--promptsource', type=Path, required=True)
    parser.add_argument('--flan', type=Path, required=True)
    parser.add_argument('--ni-v1', type=Path, required=True)
    args = parser.parse_args()
    for name, data in [
        ('promptsource.json', promptsource(args.promptsource)),
        ('flan.json', flan(args.flan)),
        ('natural_instructions_v1.json', ni_v1(args.ni_v1)),
    ]:
        (HERE / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
        print(f'{name}: {(HERE / name).stat().st_size:,} bytes')


if __name__ == '__main__':
    main()
