"""The project's own files: the cluster config validates, the prompts are the paper's, the README's commands exist."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load((REPO / "ray_cluster.yaml").read_text()))
    validate_config(cfg)
    gpu_types = [t for t, v in cfg["available_node_types"].items() if v["resources"].get("GPU")]
    assert gpu_types and cfg["available_node_types"][cfg["head_node_type"]]["resources"].get("GPU", 0) == 0


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_one():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    commands = [l.split("#", 1)[0].strip() for l in first_block.splitlines()]
    assert [c for c in commands if c and c != "sh"] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_prompts_are_verbatim_from_the_paper():
    assert (REPO / "prompts/concepts.txt").read_text().strip().startswith("As a numbered list, provide one to up to three sound(s)")
    assert (REPO / "prompts/caption.txt").read_text().strip() == "Provide a short and concise description of the following image."
    words = [l.strip() for l in (REPO / "prompts/silent_keywords.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert words == ["logo", "icon", "emblem", "symbol", "trademark", "sign"]


def test_sam_pipeline_asks_only_for_gpus_the_cluster_has():
    """Every model stage of pipelines/sam.yaml fits a node type of ray_cluster.yaml (accelerator and GPU count)."""
    from sonify.engine.config import load_config
    from sonify.stages import stage_names

    cluster = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())["available_node_types"]
    cfg = load_config(["pipeline=sam"], stage_names())
    asked = {name: conf for name, conf in cfg.stages.items() if conf.num_gpus > 0}
    assert {"concepts", "embed", "features", "latents"} <= set(asked)
    for name, conf in asked.items():
        nodes = [t for t in cluster.values() if f"accelerator_type:{conf.accelerator_type}" in t["resources"]]
        assert nodes and conf.num_gpus <= max(t["resources"]["GPU"] for t in nodes), name


def _markdown_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).strip().replace(" ", "-")


def test_readme_is_a_front_page_and_every_relative_link_resolves():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250
    broken = []
    for doc in _markdown_files():
        for url in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", url):
                continue
            path, _, anchor = url.partition("#")
            target = (doc.parent / path) if path else doc
            if not target.exists():
                broken.append(f"{doc.name}: {url}")
            elif anchor and anchor not in {_anchor(h) for h in re.findall(r"^#+ (.*)$", target.read_text(), re.M)}:
                broken.append(f"{doc.name}: {url} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    assert [p.name for p in (REPO / "docs").glob("*.md") if f"(docs/{p.name})" not in readme] == []


def test_the_readme_ray_lines_are_the_cluster_pages():
    """The README's offline Ray block (run by tests/test_ray.py) is the one docs/cluster.md explains."""
    def block(text):
        return text[text.index("On this machine, against a Ray head"):].split("```sh")[1].split("```")[0]
    assert block((REPO / "README.md").read_text()) == block((REPO / "docs" / "cluster.md").read_text())


def test_every_extra_the_code_or_docs_name_is_defined():
    """An install hint (`pip install 'sonify[x]'`, `pip install -e '.[x]'`) names an extra pyproject.toml defines."""
    import tomllib

    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    texts = [p.read_text() for p in [*(REPO / "sonify").rglob("*.py"), *_markdown_files(), REPO / "Makefile"]]
    named = {x.strip() for t in texts for group in re.findall(r"(?:sonify|\.)\[([\w,\s-]+)\]", t) for x in group.split(",")}
    assert named and named <= extras, sorted(named - extras)
