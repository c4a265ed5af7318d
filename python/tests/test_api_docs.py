"""What a newcomer reads first, through the installed wheel: `import slotline` alone
exposes `slotline.metrics`, and the usage example in `help(slotline.Client)` runs as
written (against a test server instead of 127.0.0.1:6379)."""

from __future__ import annotations

import re
import subprocess
import sys

import slotline


def test_import_slotline_exposes_metrics():
    # A fresh interpreter: in this one another test may have imported the submodule.
    code = "import slotline; print(slotline.metrics.serve.__name__, 'metrics' in slotline.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["serve", "True"]


def test_client_docstring_example_runs(redis_server):
    doc = slotline.Client.__doc__
    assert "configuration *text*" in doc and "drain_completions()" in doc
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 1, doc
    code = blocks[0].replace("redis://127.0.0.1:6379", redis_server.url)
    assert code != blocks[0]
    exec(compile(code, "Client.__doc__", "exec"), {})


def test_a_misspelt_key_warns_in_python_naming_the_known_key(redis_server):
    # The engine's own log (tracing) is invisible from Python: the warning must be a
    # Python warning, naming the key the writer meant. A correct config warns nothing.
    import warnings

    text = f"remote_url: {redis_server.url}\nextra_config:\n  chunk_sise: 8\n"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = slotline.Client(text)
        c.close()
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("extra_config.chunk_sise" in m and "extra_config.chunk_size" in m for m in msgs), msgs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slotline.Client(f"remote_url: {redis_server.url}\nextra_config:\n  chunk_size: 8\n").close()
    assert not [w for w in caught if "did you mean" in str(w.message)]
