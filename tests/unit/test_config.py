from pathlib import Path

import pytest

from raygbm.config import PipelineConfig, load_config, parse_override
from raygbm.errors import ConfigError


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.split.train + cfg.split.validation + cfg.split.test == pytest.approx(1.0)


def test_yaml_then_overrides_then_fields(tmp_path: Path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  source: /a\n  label: y\nsplit:\n  seed: 3\n")
    cfg = load_config(f, ["split.seed=9", "data.drop=[a, b]", "features.clip_quantiles=[0.01, 0.99]"], {"data.source": "/b", "data.label": None})
    assert cfg.data.source == "/b"  # explicit flag beats the file
    assert cfg.data.label == "y"  # None leaves the file's value
    assert cfg.split.seed == 9
    assert cfg.data.drop == ["a", "b"]
    assert cfg.features.clip_quantiles == (0.01, 0.99)


@pytest.mark.parametrize(
    "override, field",
    [
        ("split.train=0.9", "split"),
        ("data.labl=y", "data.labl"),
        ("split.seed=abc", "split.seed"),
        ("features.impute=mode", "features.impute"),
        ("features.derived=[{name: r, op: ratio, inputs: [a]}]", "features.derived.0"),
        ("data.bounds={x: {min: 2, max: 1}}", "data.bounds.x"),
        ("resources.num_cpus=0", "resources.num_cpus"),
    ],
)
def test_invalid_config_names_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert msg.startswith(f"invalid config: {field}")
    assert "\n" not in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("split.seed")


def test_missing_and_malformed_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_demo_config_is_valid():
    cfg = load_config(Path(__file__).parents[2] / "pipelines/configs/demo.yaml")
    assert cfg.split.time == "event_time"
    assert [d.op for d in cfg.features.derived] == ["product", "hour"]


def test_monitor_alert_after_and_threshold_mode_are_checked():
    from raygbm.config import MonitorConfig

    assert MonitorConfig().thresholds_mode == "calibrated" and MonitorConfig().false_alarm_rate == 0.001
    assert MonitorConfig(alert_after={"m": 3, "n": 5}).alert_after.n == 5
    for bad in ({"alert_after": {"m": 6, "n": 5}}, {"thresholds_mode": "auto"}, {"false_alarm_rate": 0.0},
                {"calibration_draws": 10}):
        with pytest.raises(ValueError):
            MonitorConfig(**bad)
