"""lm-evaluation-harness's own gsm8k / gsm8k_cot tasks, read from a local YAML over the jsonl files (offline)."""

from __future__ import annotations

from pathlib import Path

LMEVAL_TASKS = {"gsm8k": "gsm8k.yaml", "gsm8k_cot": "gsm8k-cot.yaml"}


def load_lmeval_task(stock: str, data_dir: Path, tmp_path: Path):
    """The stock lm-eval task ``stock`` with its dataset replaced by the local jsonl files."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager, get_task_dict

    stock_yaml = Path(lm_eval.tasks.__file__).parent / "gsm8k" / LMEVAL_TASKS[stock]
    name = f"dynsdpb_local_{stock}"
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"include: {stock_yaml}\n"
        f"task: {name}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {data_dir / 'train.jsonl'}\n"
        f"    test: {data_dir / 'test.jsonl'}\n"
    )
    return get_task_dict([name], TaskManager(include_path=str(folder)))[name]


def lmeval_judgements(task, docs: list[dict], responses: list[str]) -> list[dict]:
    """For each response: {filter name: (extracted string, exact_match)} exactly as lm-eval computes them."""
    from lm_eval.api.instance import Instance

    instances = [
        Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0, resps=[resp])
        for doc, resp in zip(docs, responses, strict=True)
    ]
    for ensemble in task._filters:
        ensemble.apply(instances)
    out = []
    for inst in instances:
        row = {}
        for name, filtered in inst.filtered_resps.items():
            row[name] = (filtered, bool(task.process_results(inst.doc, [filtered])["exact_match"]))
        out.append(row)
    return out
