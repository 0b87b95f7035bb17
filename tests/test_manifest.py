"""Manifests: YAML/JSON/CSV/Parquet -> ItemSpecs, with every problem reported at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nst_engine.planning.manifest import ItemSpec, ManifestError, StyleSpec, load_manifest
from tests.conftest import write_image


def make_tree(root: Path) -> None:
    """A single file, a folder with nested subfolders, a glob base, and two styles."""
    for rel, seed in [
        ("single.png", 1),
        ("album/x.png", 2),
        ("album/nested/y.png", 3),
        ("album/nested/deeper/z.png", 4),
        ("photos/p1.jpg", 5),
        ("photos/trip/p2.jpg", 6),
        ("photos/trip/not_matched.png", 7),  # the glob asks for *.jpg only
        ("style_a.png", 8),
        ("style_b.png", 9),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / rel, 24, 20, seed=seed)
    (root / "album" / "notes.txt").write_text("not an image")


MANIFEST_YAML = """\
name: mixed
contents:
  - single.png
  - album
  - photos/**/*.jpg
styles:
  - style_a.png
  - {name: van, image: style_b.png}
  - name: blend
    images:
      - {path: style_a.png, weight: 0.25}
      - {path: style_b.png, weight: 0.75}
sizes: [64, 128]
params:
  iterations: 5
  ratio: 1e-3
overrides:
  - match: {style: van}
    params: {iterations: 7}
  - match: {size: 128, content: "nested/*"}
    params: {seed: 3, ratio: 2e-2}
"""

EXPECTED_RELS = ["single.png", "nested/deeper/z.png", "nested/y.png", "x.png", "p1.jpg", "trip/p2.jpg"]


def as_data(spec: ItemSpec) -> tuple:
    """An ItemSpec without ``where`` (which names the manifest file and line)."""
    return (spec.content, spec.content_rel, spec.style, spec.size, spec.config)


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    problems = info.value.problems
    assert isinstance(problems, list) and problems
    return problems


def line_of(problems: list[str], source: Path, field: str) -> int:
    """The line number of the one problem about ``field``."""
    pattern = re.compile(rf"^{re.escape(str(source))}:(\d+): {re.escape(field)}: ")
    found = [int(m.group(1)) for p in problems if (m := pattern.match(p))]
    assert len(found) == 1, (field, problems)
    return found[0]


# ---------------------------------------------------------------------------- expansion


def test_yaml_expands_files_folders_and_globs_deterministically(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    source.write_text(MANIFEST_YAML)
    first = load_manifest(source)
    second = load_manifest(source)
    assert first.items == second.items
    assert first.name == "mixed"
    assert len(first.items) == 6 * 3 * 2

    # content-major, then style, then size, in manifest order (folders and globs sorted)
    expected_order = [
        (rel, style, size)
        for rel in EXPECTED_RELS
        for style in ("style_a", "van", "blend")
        for size in (64, 128)
    ]
    assert [(i.content_rel, i.style.name, i.size) for i in first.items] == expected_order

    # content_rel mirrors the folder structure under the folder/glob base
    by_rel = {i.content_rel: i.content for i in first.items}
    assert by_rel["nested/deeper/z.png"] == str((tmp_path / "album/nested/deeper/z.png").resolve())
    assert by_rel["trip/p2.jpg"] == str((tmp_path / "photos/trip/p2.jpg").resolve())
    assert by_rel["single.png"] == str((tmp_path / "single.png").resolve())
    assert all(Path(c).is_absolute() for c in by_rel.values())
    assert not any(i.content.endswith((".txt", "not_matched.png")) for i in first.items)


def test_json_manifest_gives_the_same_items(tmp_path: Path) -> None:
    make_tree(tmp_path)
    yaml_source = tmp_path / "m.yaml"
    yaml_source.write_text(MANIFEST_YAML)
    data = {
        "name": "mixed",
        "contents": ["single.png", "album", "photos/**/*.jpg"],
        "styles": [
            "style_a.png",
            {"name": "van", "image": "style_b.png"},
            {
                "name": "blend",
                "images": [{"path": "style_a.png", "weight": 0.25}, {"path": "style_b.png", "weight": 0.75}],
            },
        ],
        "sizes": [64, 128],
        "params": {"iterations": 5, "ratio": 1e-3},
        "overrides": [
            {"match": {"style": "van"}, "params": {"iterations": 7}},
            {"match": {"size": 128, "content": "nested/*"}, "params": {"seed": 3, "ratio": 2e-2}},
        ],
    }
    json_source = tmp_path / "m.json"
    json_source.write_text(json.dumps(data, indent=2))
    from_yaml = [as_data(i) for i in load_manifest(yaml_source).items]
    from_json = [as_data(i) for i in load_manifest(json_source).items]
    assert from_json == from_yaml
    assert len(from_json) == 36


def test_style_forms(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    source.write_text(MANIFEST_YAML)
    styles = {i.style.name: i.style for i in load_manifest(source).items}
    a = str((tmp_path / "style_a.png").resolve())
    b = str((tmp_path / "style_b.png").resolve())
    assert styles == {
        "style_a": StyleSpec("style_a", (a,), (1.0,)),
        "van": StyleSpec("van", (b,), (1.0,)),
        "blend": StyleSpec("blend", (a, b), (0.25, 0.75)),
    }


def test_unnamed_blend_is_named_after_its_images(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    source.write_text(
        "contents: [single.png]\n"
        "styles:\n  - images: [style_a.png, {path: style_b.png, weight: 2}]\n"
        "sizes: [64]\n"
    )
    (item,) = load_manifest(source).items
    assert item.style.name == "style_a+style_b"
    assert item.style.weights == (1.0, 2.0)


def test_style_folders_and_globs_give_one_style_per_image(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [single.png]\nstyles: [album, 'style_*.png']\nsizes: [64]\n")
    styles = [i.style for i in load_manifest(source).items]
    assert [s.name for s in styles] == ["nested/deeper/z", "nested/y", "x", "style_a", "style_b"]
    assert styles[2].images == (str((tmp_path / "album/x.png").resolve()),)


def test_file_uris_are_listed_like_paths_and_kept_as_uris(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    base = f"file://{tmp_path.resolve()}"
    source.write_text(
        f"contents: ['{base}/album/', '{base}/photos/**/*.jpg', '{base}/single.png']\n"
        f"styles: ['{base}/style_a.png']\nsizes: [64]\n"
        f"params: {{init: '{base}/style_b.png'}}\n"
    )
    items = load_manifest(source).items
    assert [i.content_rel for i in items] == [
        "nested/deeper/z.png",
        "nested/y.png",
        "x.png",
        *EXPECTED_RELS[-2:],
        "single.png",
    ]
    assert items[0].content == f"{base}/album/nested/deeper/z.png"
    assert items[0].style.images == (f"{base}/style_a.png",)
    assert items[0].config.init == f"{base}/style_b.png"


def test_calibration_entries_expand_and_are_checked(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    body = "contents: [single.png]\nstyles: [style_a.png]\nsizes: [64]\n"
    source.write_text(body + "weights: {normalize: true, calibration: [album, 'style_*.png']}\n")
    calibration = load_manifest(source).weights.calibration
    assert [Path(p).name for p in calibration] == ["z.png", "y.png", "x.png", "style_a.png", "style_b.png"]
    source.write_text(body + "weights: {calibration: album, source: 's3://b/vgg.pth'}\n")
    problems = problems_of(source)
    assert any("weights.calibration: expected a list" in p for p in problems), problems
    assert any("weights.source: a weights file must be a local path" in p for p in problems), problems
    source.write_text(body + "weights: {calibration: ['nothing/*.png']}\n")
    assert any(
        "weights.calibration[0]: glob 'nothing/*.png' matches no image files" in p
        for p in problems_of(source)
    )


def test_params_defaults_and_overrides_apply_to_matching_items_only(tmp_path: Path) -> None:
    make_tree(tmp_path)
    source = tmp_path / "m.yaml"
    source.write_text(MANIFEST_YAML)
    items = load_manifest(source).items
    for item in items:
        cfg = item.config
        assert cfg.size == item.size
        # YAML 1.1 reads 1e-3 and 2e-2 as strings; they must become floats
        assert isinstance(cfg.ratio, float)
        assert cfg.iterations == (7 if item.style.name == "van" else 5)
        nested_big = item.size == 128 and item.content_rel.startswith("nested/")
        assert cfg.seed == (3 if nested_big else 0), item.content_rel
        assert cfg.ratio == (0.02 if nested_big else 0.001)
    assert sum(i.config.seed == 3 for i in items) == 2 * 3  # 2 nested contents × 3 styles × size 128


def test_yaml_float_string_ratio_becomes_float(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams: {ratio: 1e-3}\n")
    (item,) = load_manifest(source).items
    assert type(item.config.ratio) is float
    assert item.config.ratio == pytest.approx(1e-3)


# ---------------------------------------------------------------------------- validation


BROKEN_YAML = """\
name: broken
colour: red
contents:
  - single.png
  - photos/**/*.gif
styles:
  - style_a.png
  - other/style_a.png
sizes: [64, big, 12.5]
params:
  iterations: many
  ratio: -1
  sharpness: 3
"""


def test_validation_reports_every_problem_with_file_line_and_field(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "other").mkdir()
    write_image(tmp_path / "other" / "style_a.png", 20, 20, seed=3)
    source = tmp_path / "broken.yaml"
    source.write_text(BROKEN_YAML)
    problems = problems_of(source)
    text = "\n".join(problems)
    # every problem names the file and a line number
    assert all(re.match(rf"^{re.escape(str(source))}:\d+: ", p) for p in problems), problems
    # line numbers are those of the offending keys / list items
    assert line_of(problems, source, "colour") == 2
    assert line_of(problems, source, "contents[1]") == 5
    assert line_of(problems, source, "styles[0]") == 7
    assert line_of(problems, source, "sizes[1]") == 9
    assert line_of(problems, source, "sizes[2]") == 9
    assert line_of(problems, source, "params.iterations") == 11
    assert line_of(problems, source, "params.sharpness") == 13
    # the bad ratio is reported too, naming the field as the manifest spells it
    assert line_of(problems, source, "params.ratio") == 12
    assert "--" not in text
    assert "matches no image files" in text
    assert "used twice" in text
    assert "'big'" in text and "12.5" in text
    assert "unknown parameter" in text and "unknown field" in text
    # colour, glob, duplicate style, two sizes, iterations, sharpness, ratio
    assert len(problems) == 8, problems


@pytest.mark.parametrize(
    ("params", "field", "needle"),
    [
        ("ratio: -1", "ratio", "positive"),
        ("iterations: many", "iterations", "'many'"),
        ("iterations: inf", "iterations", "whole number"),
        ("style_layers: [conv9_9]", "style_layers", "conv9_9"),
        ("optimizer: sgd", "optimizer", "'sgd'"),
        ("channels_last: maybe", "channels_last", "true or false"),
        ("precision: fp16", "precision", "fp32, tf32, bf16"),
        ("content_layer_weights: [1, x]", "content_layer_weights", "numbers"),
    ],
)
def test_bad_param_values(tmp_path: Path, params: str, field: str, needle: str) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text(f"contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams:\n  {params}\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:")
    assert re.match(rf"^{re.escape(str(source))}:5: params\.{field}: ", problem), problem
    assert needle in problem and "--" not in problem


def test_a_bad_parameter_is_reported_once_not_once_per_size(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64, 128, 256]\nparams: {ratio: -1}\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:4: params.ratio: ")


def test_param_problems_are_reported_even_when_nothing_expands(tmp_path: Path) -> None:
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: ['nothing/*.png']\nstyles: [s.png]\nsizes: [64]\nparams: {ratio: -1}\n")
    problems = problems_of(source)
    assert len(problems) == 2, problems
    assert line_of(problems, source, "contents[0]") == 1
    assert line_of(problems, source, "params.ratio") == 4


@pytest.mark.parametrize(
    ("sizes", "needle"),
    [
        ("[]", "give a list of sizes"),
        ("256", "give a list of sizes"),
        ("[0]", "positive"),
        ("['256']", "'256'"),
    ],
)
def test_bad_sizes(tmp_path: Path, sizes: str, needle: str) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text(f"contents: [c.png]\nstyles: [s.png]\nsizes: {sizes}\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:3: sizes")
    assert needle in problem


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ("../{style}/{content}.png", "'..'"),
        ("{style}/../../{content}.png", "'..'"),
        ("/abs/{style}/{content}.png", "absolute"),
        ("C:/{style}/{content}.png", "absolute"),
        ("{style}/{nope}.png", "unknown field 'nope'"),
        ("{style.missing}/{content}.png", "missing"),
        ("{style}/{size}/{content}.jpg", "must end in .png"),
        (7, "expected a template"),
    ],
)
def test_bad_layouts(tmp_path: Path, layout: object, needle: str) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text(f"contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nlayout: {json.dumps(layout)}\n")
    problems = problems_of(source)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{source}:4: layout: ")
    assert needle in problems[0]


def test_good_layout_fields_are_accepted(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text(
        "contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nlayout: '{size}/{style}/{content_name}-{id}.png'\n"
    )
    assert load_manifest(source).layout == "{size}/{style}/{content_name}-{id}.png"


def test_duplicate_style_names(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    write_image(tmp_path / "t.png", 20, 20, seed=3)
    source = tmp_path / "m.yaml"
    source.write_text(
        "contents: [c.png]\n"
        "styles:\n"
        "  - {name: same, image: s.png}\n"
        "  - {name: same, image: t.png}\n"
        "sizes: [64]\n"
    )
    (problem,) = problems_of(source)
    assert re.match(rf"^{re.escape(str(source))}:[34]: styles\[[01]\]: style name 'same'", problem), problem


def test_invalid_yaml_syntax_gives_one_problem_with_the_line(tmp_path: Path) -> None:
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png\nsizes: [64]\nparams: {a: 1\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:")
    assert "not valid YAML" in problem
    line = int(problem.split(":")[1])
    assert 2 <= line <= 4


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    source = tmp_path / "m.json"
    source.write_text('{\n  "contents": ["c.png"],\n  "styles": ["s.png"\n  "sizes": [64]\n}\n')
    (problem,) = problems_of(source)
    assert re.match(rf"^{re.escape(str(source))}:[34]: not valid YAML/JSON", problem), problem


def test_not_a_mapping(tmp_path: Path) -> None:
    source = tmp_path / "m.yaml"
    source.write_text("- just\n- a list\n")
    (problem,) = problems_of(source)
    assert "expected a mapping" in problem


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    text = tmp_path / "m.txt"
    text.write_text("contents: [c.png]\n")
    (problem,) = problems_of(text)
    assert "unknown manifest type '.txt'" in problem
    (problem,) = problems_of(tmp_path / "absent.yaml")
    assert "not found" in problem and "absent.yaml" in problem


def test_python_tags_are_rejected_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.yaml"
    source.write_text(
        f'contents: !!python/object/apply:os.system ["touch {marker}"]\nstyles: [s.png]\nsizes: [64]\n'
    )
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:1")
    assert "not valid YAML" in problem
    assert not marker.exists()

    source.write_text(f"name: !!python/object/new:subprocess.check_call [[touch, {marker}]]\n")
    problems_of(source)
    assert not marker.exists()


# ---------------------------------------------------------------------------- output


def test_output_override_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative outputs (the default, --output) become absolute where the command runs: a
    worker on another node, in another working directory, writes to the same place."""
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    body = "contents: [c.png]\nstyles: [s.png]\nsizes: [64]\n"
    with_output = tmp_path / "with.yaml"
    with_output.write_text("name: named\noutput: results/here\n" + body)
    assert load_manifest(with_output).output == str((tmp_path / "results/here").resolve())
    assert load_manifest(with_output, output="/elsewhere/x").output == "/elsewhere/x"
    assert load_manifest(with_output, output="s3://bucket/run").output == "s3://bucket/run"
    assert load_manifest(with_output, output="rel/x").output == str(here / "rel/x")

    named = tmp_path / "named.yaml"
    named.write_text("name: fancy\n" + body)
    assert load_manifest(named).output == str(here / "out" / "fancy")
    unnamed = tmp_path / "plain.yaml"
    unnamed.write_text(body)
    manifest = load_manifest(unnamed)
    assert manifest.name == "plain"
    assert manifest.output == str(here / "out" / "plain")

    uri = tmp_path / "uri.yaml"
    uri.write_text("output: s3://bucket/prefix\n" + body)
    assert load_manifest(uri).output == "s3://bucket/prefix"


# ---------------------------------------------------------------------------- tables


def make_table_images(root: Path) -> None:
    for name, seed in [("c1.png", 1), ("sub/c2.png", 2), ("s1.png", 3), ("s2.png", 4)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_image(root / name, 20, 24, seed=seed)


CSV_TEXT = """\
content,style,size,ratio,iterations,style_weights
c1.png,s1.png,64,1e-3,5,
sub/c2.png,s1.png;s2.png,128,0.01,7,0.25;0.75
"""


def test_csv_and_parquet_tables_give_equivalent_items(tmp_path: Path) -> None:
    make_table_images(tmp_path)
    csv_source = tmp_path / "table.csv"
    csv_source.write_text(CSV_TEXT)
    pq.write_table(
        pa.table(
            {
                "content": ["c1.png", "sub/c2.png"],
                "style": ["s1.png", "s1.png;s2.png"],
                "size": pa.array([64, 128], pa.int64()),
                "ratio": [1e-3, 0.01],
                "iterations": pa.array([5, 7], pa.int64()),
                "style_weights": [None, "0.25;0.75"],
            }
        ),
        tmp_path / "table.parquet",
    )
    from_csv = load_manifest(csv_source)
    from_parquet = load_manifest(tmp_path / "table.parquet")
    assert [as_data(i) for i in from_csv.items] == [as_data(i) for i in from_parquet.items]
    first, second = from_csv.items
    s1, s2 = (str((tmp_path / n).resolve()) for n in ("s1.png", "s2.png"))
    assert first.content == str((tmp_path / "c1.png").resolve())
    assert first.style == StyleSpec("s1", (s1,), (1.0,))
    assert (first.size, first.config.size, first.config.iterations) == (64, 64, 5)
    assert first.config.ratio == pytest.approx(1e-3) and isinstance(first.config.ratio, float)
    assert second.content_rel == "sub/c2.png"
    assert second.style == StyleSpec("s1+s2", (s1, s2), (0.25, 0.75))
    assert (second.size, second.config.iterations, second.config.ratio) == (128, 7, 0.01)
    assert "line 3" in second.where
    assert from_csv.name == "table" and from_csv.output == str((Path("out") / "table").resolve())
    assert load_manifest(csv_source, output="elsewhere").output == str(Path("elsewhere").resolve())


def test_csv_errors_name_the_line_and_column(tmp_path: Path) -> None:
    make_table_images(tmp_path)
    source = tmp_path / "table.csv"
    source.write_text(
        "content,style,size,ratio,iterations,style_weights\n"
        "c1.png,s1.png,64,1e-3,5,\n"
        "c1.png,s1.png;s2.png,big,0.01,many,0.5\n"
        "c1.png,,12.5,-1,5,\n"
        "c1.png,s1.png;s2.png,64,0.01,5,-1;2\n"
    )
    problems = problems_of(source)
    assert f"{source}: line 3: size: expected a positive whole number, got 'big'" in problems
    assert any(p.startswith(f"{source}: line 3: iterations: ") and "'many'" in p for p in problems), problems
    assert any(p.startswith(f"{source}: line 3: style_weights: give 2 weights") for p in problems), problems
    assert any(p.startswith(f"{source}: line 4: style: empty") for p in problems), problems
    assert f"{source}: line 4: size: expected a positive whole number, got '12.5'" in problems
    assert any(p.startswith(f"{source}: line 5: style_weights: ") for p in problems), problems
    # a parameter's range is checked with its type now, so line 4's ratio is not hidden by the row's
    # other problems
    assert any(p.startswith(f"{source}: line 4: ratio: must be positive") for p in problems), problems
    assert not any("line 2" in p for p in problems)
    assert len(problems) == 7, problems


def test_csv_bad_parameter_value_is_reported_per_line(tmp_path: Path) -> None:
    make_table_images(tmp_path)
    source = tmp_path / "table.csv"
    source.write_text("content,style,size,ratio\nc1.png,s1.png,64,1e-3\nc1.png,s1.png,128,-1\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}: line 3: ratio: ")
    assert "--" not in problem


def test_table_missing_and_unknown_columns(tmp_path: Path) -> None:
    make_table_images(tmp_path)
    source = tmp_path / "table.csv"
    source.write_text("content,size,colour\nc1.png,64,red\n")
    problems = problems_of(source)
    assert any("style: missing column" in p for p in problems), problems
    assert any("colour: unknown column" in p for p in problems), problems
    assert len(problems) == 2

    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"content": ["c1.png"], "style": ["s1.png"]}), parquet)
    (problem,) = problems_of(parquet)
    assert "size: missing column" in problem


def test_unreadable_parquet(tmp_path: Path) -> None:
    source = tmp_path / "table.parquet"
    source.write_bytes(b"definitely not parquet")
    (problem,) = problems_of(source)
    assert "not a readable Parquet file" in problem


def test_override_that_matches_nothing_is_still_validated(tmp_path: Path) -> None:
    import yaml

    from nst_engine.planning.manifest import ManifestError, load_manifest
    from tests.conftest import write_image

    write_image(tmp_path / "c.png", 40, 32, seed=1)
    write_image(tmp_path / "s.png", 40, 32, seed=2)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "contents": ["c.png"],
                "styles": ["s.png"],
                "sizes": [32],
                "overrides": [{"match": {"style": "nobody"}, "params": {"ratio": -1}}],
            }
        )
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    assert any(
        re.match(rf"^{re.escape(str(manifest))}:\d+: overrides\[0\]\.params\.ratio: ", p)
        for p in info.value.problems
    ), info.value.problems
    assert not any("--" in p for p in info.value.problems)


def test_done_when_negative_ratio_names_file_line_and_field(tmp_path: Path) -> None:
    """The issue's acceptance test: file, line and ``params.ratio``, no CLI flag."""
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "demo.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams: {ratio: -1}\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(source)
    assert f"{source}:4: params.ratio: " in str(info.value)
    assert "--" not in str(info.value)


def test_an_override_error_points_at_the_override_that_set_the_value(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text(
        "contents: [c.png]\nstyles: [s.png]\nsizes: [64]\n"
        "params: {iterations: 5}\n"
        "overrides:\n"
        "  - match: {style: s}\n"
        "    params:\n"
        "      tv_weight: -1\n"
    )
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:8: overrides[0].params.tv_weight: "), problem


def test_bad_choice_names_the_choices(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams:\n  color: purple\n")
    (problem,) = problems_of(source)
    assert problem == f"{source}:5: params.color: expected one of none, histogram, luminance, got 'purple'"

    table = tmp_path / "t.csv"
    table.write_text("content,style,size,pooling\nc.png,s.png,64,median\n")
    (problem,) = problems_of(table)
    assert problem == f"{table}: line 2: pooling: expected one of avg, max, got 'median'"


def test_choices_are_enums_and_ids_hash_plain_strings(tmp_path: Path) -> None:
    from nst_engine.engine.config import ColorMode, Precision

    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams: {color: luminance}\n")
    (item,) = load_manifest(source).items
    assert item.config.color is ColorMode.LUMINANCE and item.config.precision is Precision.FP32
    params = item.config.to_params()
    assert type(params["color"]) is str and json.loads(json.dumps(params))["color"] == "luminance"


def test_unknown_parameter_lists_the_parameters(tmp_path: Path) -> None:
    from dataclasses import fields

    from nst_engine.engine.config import SynthesisConfig

    write_image(tmp_path / "c.png", 20, 20, seed=1)
    write_image(tmp_path / "s.png", 20, 20, seed=2)
    source = tmp_path / "m.yaml"
    source.write_text("contents: [c.png]\nstyles: [s.png]\nsizes: [64]\nparams: {alpha: 1}\n")
    (problem,) = problems_of(source)
    assert problem.startswith(f"{source}:4: params.alpha: unknown parameter; choose from ")
    assert all(f.name in problem for f in fields(SynthesisConfig) if f.name != "size")
