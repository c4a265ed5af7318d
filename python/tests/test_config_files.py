"""Relative TLS file parameters resolve against the LMCache YAML file's directory
(issue 18 item 9), as the engine does for ``slotline --config FILE``. Pure Python:
``slotline/config.py`` is loaded from the source tree."""

import importlib.util
import os

_SRC = os.path.join(os.path.dirname(__file__), "..", "slotline", "config.py")
_spec = importlib.util.spec_from_file_location("slotline_config_src", _SRC)
cfg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cfg)


def test_relative_tls_files_follow_the_config_file(tmp_path):
    conf = tmp_path / "conf" / "lmcache.yaml"
    params = {"url": "rediss://h:1", "tls_ca_file": "tls/ca.pem",
              "tls_cert_file": "/abs/client.pem", "tls_key_file": "../k.pem", "cores": 1}
    out = cfg.resolve_files(params, str(conf))
    assert out["tls_ca_file"] == str(tmp_path / "conf" / "tls" / "ca.pem")
    assert out["tls_cert_file"] == "/abs/client.pem"
    assert out["tls_key_file"] == str(tmp_path / "conf" / ".." / "k.pem")
    assert out["cores"] == 1 and params["tls_ca_file"] == "tls/ca.pem"


def test_without_a_config_file_paths_stay_relative_to_the_cwd():
    params = {"tls_ca_file": "tls/ca.pem"}
    assert cfg.resolve_files(params, None) == params
    assert cfg.resolve_files(params, "") == params
