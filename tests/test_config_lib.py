"""Config parsing and validation: bad values stop with a message naming the key."""

import pytest

from jest_jax import config_lib


def jest_config(**selection):
  config = config_lib.load_config("jest", "method=jest,filter_ratio=0.8")
  config.reference.cache_dir = "somewhere"
  config.selection.update(selection)
  return config


def test_parse_arg_converts_to_default_types():
  parsed = config_lib.parse_arg("steps=10,filter_ratio=0.5,flag=false",
                                steps=1, filter_ratio=0.1, flag=True)
  assert (parsed.steps, parsed.filter_ratio, parsed.flag) == (10, 0.5, False)


def test_parse_arg_rejects_unknown_key_naming_it():
  with pytest.raises(config_lib.ConfigError, match="unknown config argument "
                     "'step'.*known keys"):
    config_lib.parse_arg("step=3", steps=1)


def test_parse_arg_rejects_bad_value_type():
  with pytest.raises(config_lib.ConfigError, match="steps='ten'.*int"):
    config_lib.parse_arg("steps=ten", steps=1)


def test_jest_config_is_valid_and_has_super_batch_of_b_over_1_minus_f():
  config = jest_config()
  config_lib.validate(config, num_devices=8)
  assert config_lib.super_batch_size(config) == 320


def test_iid_and_reference_configs_are_valid_without_a_cache():
  config_lib.validate(config_lib.load_config("jest", "method=iid"), num_devices=8)
  config_lib.validate(config_lib.load_config("reference", None), num_devices=8)


def test_unknown_method_is_rejected():
  with pytest.raises(config_lib.ConfigError, match="method='jset'"):
    config_lib.load_config("jest", "method=jset")


@pytest.mark.parametrize("key, value, message", [
    ("filter_ratio", 1.0, r"config.selection.filter_ratio=1.0: must be in \[0, 1\)"),
    ("filter_ratio", 0.7, "batch_size / \\(1 - filter_ratio\\) must be an integer"),
    ("n_chunks", 5, "config.selection.n_chunks=5: must divide batch_size=64"),
    ("scoring", "learnable", "config.selection.scoring='learnable'"),
    ("kind", "greedy", "config.selection.kind='greedy'"),
    ("gain", -1.0, "config.selection.gain=-1.0: must be a positive"),
])
def test_bad_selection_values_name_the_key(key, value, message):
  config = jest_config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_missing_reference_cache_says_how_to_build_it():
  config = config_lib.load_config("jest", "method=jest")
  with pytest.raises(config_lib.ConfigError,
                     match="reference.cache_dir.*jest_jax.cache_reference"):
    config_lib.validate(config)


def test_hard_learner_needs_no_reference():
  config_lib.validate(config_lib.load_config("jest", "method=hard_learner"))


def test_batch_not_divisible_by_devices_is_rejected():
  config = config_lib.load_config("jest", "method=iid")
  config.batch_size = 12
  with pytest.raises(config_lib.ConfigError, match="batch_size=12.*devices \\(8\\)"):
    config_lib.validate(config, num_devices=8)


def test_negative_learning_rate_is_rejected():
  config = config_lib.load_config("reference", None)
  config.optim.lr = -1.0
  with pytest.raises(config_lib.ConfigError, match="optim.lr=-1.0"):
    config_lib.validate(config)
