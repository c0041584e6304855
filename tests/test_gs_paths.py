"""gs:// run directories: the run-directory code goes through etils.epath, never the local disk.

Offline, `gs://` is served by a local-directory fsspec filesystem registered
under the `gcs` protocol (what epath uses for gs:// without TensorFlow).
The C++ readers and writers (Orbax's TensorStore, ArrayRecord) have their own
GCS clients and are not redirected here; the test checks they get the
gs:// URI unchanged.
"""

import gzip
import json

import fsspec
import pytest
from etils import epath
from fsspec.implementations.local import LocalFileSystem

from jaxtrain import runconfig
from jaxtrain.config import load_run_config, save_config
from jaxtrain.data import prepare, stages
from jaxtrain.rundir import RunDir
from jaxtrain.data import tokenizer as tok
from jaxtrain.train.metrics import MetricsWriter
from jaxtrain.train import checkpoint

from conftest import tiny_config


class _FakeGCS(LocalFileSystem):
    root = None
    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                return f"{cls.root}/{path[len(prefix):]}".rstrip("/")
        return super()._strip_protocol(path)

    def glob(self, path, **kwargs):  # like gcsfs: "bucket/object" names, without the protocol
        return [p[len(self.root) + 1:] for p in super().glob(path, **kwargs)]


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    _FakeGCS.root = str(tmp_path / "gcs")
    (tmp_path / "gcs").mkdir()
    fsspec.register_implementation("gcs", _FakeGCS, clobber=True)
    fsspec.register_implementation("gs", _FakeGCS, clobber=True)
    _FakeGCS.clear_instance_cache()
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem = lambda name: _FakeGCS() if name in ("gs", "gcs") else fsspec.filesystem(name)
    monkeypatch.setattr("etils.epath.gpath._is_tf_installed", lambda: False, raising=False)
    yield tmp_path / "gcs"
    del backend.fsspec_backend._get_filesystem  # back to the class's method


def test_prepare_tokenizer_config_and_metrics_on_gs(fake_gcs, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(60):
        (docs / f"d{i}.txt").write_text(f"Document number {i} talks about topic {i % 7} at some length. " * 8)
    cfg = tiny_config(
        "data.sources=[{name: notes, type: files, filters: [], path: '" + str(docs / "*.txt") + "'}]", "data.near_dedup=false",
        "data.eval_fraction=0.2", "tokenizer.vocab_size=300", "model.vocab_size=300",
    )
    run = epath.Path("gs://bucket/runs/r1")
    assert str(run).startswith("gs://")
    report = prepare.prepare_corpus(cfg.data, run)
    assert report["notes"]["input_docs"] == 60
    assert (fake_gcs / "bucket/runs/r1/data/clean/report.json").exists()
    assert not (fake_gcs / "bucket/runs/r1/data/clean.partial").exists()
    model = prepare.prepare_tokenizer(cfg.tokenizer, cfg.data, cfg.model.vocab_size, run)
    assert str(model) == "gs://bucket/runs/r1/tokenizer/tokenizer.model"
    assert (fake_gcs / "bucket/runs/r1/tokenizer/tokenizer.model").exists()
    assert tok.load(model).encode("Document number 3") and len(tok.fingerprint(model)) == 16
    save_config(cfg, run / "config.yaml")
    assert load_run_config("gs://bucket/runs/r1").tokenizer.vocab_size == 300
    writer = MetricsWriter(run)
    writer.write({"step": 1, "loss": 2.5})
    writer.write({"step": 2, "loss": 2.0})
    writer.close()
    rows = [json.loads(x) for x in (fake_gcs / "bucket/runs/r1/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not (fake_gcs / "bucket/runs/r1/tensorboard").exists()  # TensorBoard stays local-only
    # Orbax talks to GCS itself (google-cloud-storage, TensorStore): it must get the URI intact
    assert str(checkpoint.checkpoint_dir(run / "checkpoints")) == "gs://bucket/runs/r1/checkpoints"


def test_stages_publish_and_recover_on_gs(fake_gcs, tmp_path, monkeypatch):
    """The same staging directory, rename and marker on gs:// (where a rename is a copy): a stage
    interrupted after its publish has no marker and is rebuilt; the config is recorded there."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(40):
        (docs / f"d{i}.txt").write_text(f"Document number {i} talks about topic {i % 7} at some length. " * 8)
    cfg = tiny_config(
        "data.sources=[{name: notes, type: files, filters: [], path: '" + str(docs / "*.txt") + "'}]", "data.near_dedup=false",
        "data.eval_fraction=0.2", "tokenizer.vocab_size=300", "model.vocab_size=300",
    )
    run = RunDir("gs://bucket/runs/r2")
    runconfig.record_for_data(cfg, run)
    assert runconfig.recorded(run) == cfg and (fake_gcs / "bucket/runs/r2/config.yaml").exists()

    def fail_after_publish(stage, point):
        if point == "published":
            raise RuntimeError(f"killed at {stage}:{point}")

    monkeypatch.setattr(stages, "FAULT_HOOK", fail_after_publish)
    with pytest.raises(RuntimeError, match="killed at curation:published"):
        prepare.prepare_corpus(cfg.data, run)
    assert (fake_gcs / "bucket/runs/r2/data/clean/report.json").exists()  # published ...
    assert not (fake_gcs / "bucket/runs/r2/data/clean/_COMPLETE.json").exists()  # ... but not done
    monkeypatch.setattr(stages, "FAULT_HOOK", None)
    report = prepare.prepare_corpus(cfg.data, run)
    assert report["notes"]["read"] == report["notes"]["input_docs"] == 40
    assert stages.marker(run, "curation")["digest"] == stages.file_digest(run.curation_report, run.clean / "read_counts.json",
                                                                       run.curation_inputs)
    prepare.prepare_tokenizer(cfg.tokenizer, cfg.data, cfg.model.vocab_size, run)
    assert stages.marker(run, "tokenizer")["digest"] == tok.fingerprint(run.tokenizer)
    assert not (fake_gcs / "bucket/runs/r2/data/clean.partial").exists()
    assert not (fake_gcs / "bucket/runs/r2/tokenizer.partial").exists()


def test_a_warc_source_on_gs(fake_gcs):
    """WARC and ARC files in a bucket: globbed and read through etils.epath, like the local ones."""
    from jaxtrain.data import files, sample_crawl, web

    page = sample_crawl.pydoc_html("textwrap").encode()
    (fake_gcs / "bucket/crawl").mkdir(parents=True)
    sample_crawl.write_warc(str(fake_gcs / "bucket/crawl/a.warc.gz"),
                            [sample_crawl.response(f"https://a.org/{i}.html", page) for i in range(2)])
    (fake_gcs / "bucket/crawl/b.arc.gz").write_bytes(gzip.compress(sample_crawl.arc_record("http://b.org/x.html", page)))
    found = files.readable_matches("gs://bucket/crawl/*")
    assert found == ["gs://bucket/crawl/a.warc.gz", "gs://bucket/crawl/b.arc.gz"]
    docs = [d for path in found for d in web.read_warc(path, "web")]
    assert [d.meta["url"] for d in docs] == ["https://a.org/0.html", "https://a.org/1.html", "http://b.org/x.html"]
    assert all("dedent" in d.text for d in docs)
