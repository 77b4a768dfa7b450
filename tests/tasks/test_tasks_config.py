"""Task templates and the ``tasks`` config section: defaults, YAML overrides, clear errors."""

from __future__ import annotations

import pytest

from semconv.config import ConfigError, load_config, validate_config
from semconv.prompts import PREAMBLE, RESPONSE, SEQUENTIAL_INSTRUCTION
from semconv.tasks.templates import DEFAULT_TEMPLATES, TASK_NAMES, TEMPLATE_FIELDS, render, resolve_templates


def test_every_task_has_several_valid_default_paraphrases():
    assert set(DEFAULT_TEMPLATES) == set(TASK_NAMES) - {"history"}  # history rows use a fixed header
    for task, templates in DEFAULT_TEMPLATES.items():
        assert len(templates) >= 2 and len(set(templates)) == len(templates)
        required, optional = TEMPLATE_FIELDS[task]
        fields = {f: "X" for f in required | optional}
        for t in templates:
            prompt = render(t, **fields)
            assert prompt.startswith(PREAMBLE) and prompt.endswith(RESPONSE)
    assert DEFAULT_TEMPLATES["sequential"][0] == SEQUENTIAL_INSTRUCTION  # the inference prompt


def test_yaml_overrides_replace_templates_and_weights(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "tasks:\n"
        "  negative_ratio: 5\n"
        "  weights: {item2title: 0.5}\n"
        "  templates:\n"
        "    title2item: ['Which item is called {title}?']\n"
    )
    cfg = load_config(path, ["tasks.query_source=metadata"])
    assert cfg.tasks.negative_ratio == 5 and cfg.tasks.weight("item2title") == 0.5
    assert cfg.tasks.weight("sequential") == 1.0 and cfg.tasks.query_source == "metadata"
    templates = resolve_templates(cfg.tasks.templates)
    assert templates["title2item"] == ("Which item is called {title}?",)
    assert templates["item2title"] == DEFAULT_TEMPLATES["item2title"]


@pytest.mark.parametrize(
    "tasks,message",
    [
        ({"weights": {"sequentail": 1.0}}, "unknown task 'sequentail'"),
        ({"weights": {"negative": -1}}, "must be >= 0"),
        ({"templates": {"sequential": ["no history here"]}}, r"missing \{history\}"),
        ({"templates": {"title2item": ["{title} by {brand}"]}}, r"unknown \{brand\}"),
        ({"templates": {"query2item": []}}, "at least one template"),
        ({"templates": {"query2item": ["{query"]}}, "malformed"),
        ({"query_source": "tweets"}, "tasks.query_source"),
        ({"negative_ratoi": 2}, "tasks.negative_ratoi: unknown key"),
    ],
)
def test_bad_tasks_config_names_the_problem(tasks, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"tasks": tasks})
