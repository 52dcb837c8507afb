"""Training resumes from a checkpoint exactly where an uninterrupted run would be, evaluations included."""
import jax.numpy as jnp
import numpy as np

from specdec.train.loop import TrainConfig, train


def _loss(params, batch):
    error = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(error ** 2), {}


def _batch_at(step):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)}


def _evaluate(params):
    return {"w0": params["w"][0]}


def test_resuming_with_evaluations_in_the_history_continues_the_same_run(tmp_path):
    init = {"w": jnp.zeros(3)}
    cfg = TrainConfig(steps=40, batch_size=4, learning_rate=0.05, warmup_steps=2, eval_every=10, checkpoint_every=10)
    whole = train(_loss, init, _batch_at, cfg, _evaluate, tmp_path / "whole.ckpt", progress=False)

    def interrupted(step):
        if step == 25:
            raise KeyboardInterrupt("stopped at step 25")
        return _batch_at(step)

    try:
        train(_loss, init, interrupted, cfg, _evaluate, tmp_path / "split.ckpt", progress=False)
    except KeyboardInterrupt:
        pass
    resumed = train(_loss, init, _batch_at, cfg, _evaluate, tmp_path / "split.ckpt", progress=False)
    assert [h["step"] for h in resumed.history] == [10, 20, 30, 40]  # the earlier evaluations come back
    assert np.allclose(resumed.params["w"], whole.params["w"], atol=1e-6)
    assert not np.allclose(whole.params["w"], 0.0)
