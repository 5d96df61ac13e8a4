"""The OPD agent: MaskablePPO with the residual extractor and expert guidance.

:class:`GuidedMaskablePPO` is sb3-contrib's ``MaskablePPO`` whose rollout
collection asks the environment for an expert action at every step
(``env.expert_action()``, not None only in every f-th episode — Algorithm 2
of the paper). When there is one, the expert's action is executed and stored
in the rollout buffer together with the current policy's value and
log-probability *of that action*, so the clipped PPO update treats it like
the policy's own experience and pulls the policy towards the expert.

Training curves (loss, value loss, mean episode reward per iteration) are
captured by an in-memory logger output and returned as a DataFrame; the
model is saved as stable-baselines3's zip.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import torch as th
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.buffers import MaskableRolloutBuffer
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from optimizer.rl.extractor import ResidualExtractor

CURVE_KEYS = {
    "time/total_timesteps": "timesteps",
    "train/loss": "loss",
    "train/value_loss": "value_loss",
    "train/policy_gradient_loss": "policy_loss",
    "train/entropy_loss": "entropy_loss",
    "rollout/ep_rew_mean": "ep_reward_mean",
}


class CurveWriter(KVWriter):
    """Keeps every logger dump in memory (one row per PPO iteration)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0):
        row = {new: float(key_values[k]) for k, new in CURVE_KEYS.items() if k in key_values}
        if row:
            self.rows.append(row)

    def close(self) -> None:
        pass


class GuidedMaskablePPO(MaskablePPO):
    """MaskablePPO that executes and learns from the env's expert actions when offered."""

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: MaskableRolloutBuffer,
        n_rollout_steps: int,
        use_masking: bool = True,
    ) -> bool:
        if self._last_obs is None:
            raise RuntimeError("no previous observation: call learn(), not collect_rollouts()")
        if use_masking and not is_masking_supported(env):
            raise ValueError("the environment does not expose action_masks()")
        self.policy.set_training_mode(False)
        n_steps = 0
        action_masks = None
        rollout_buffer.reset()
        callback.on_rollout_start()
        while n_steps < n_rollout_steps:
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                if use_masking:
                    action_masks = get_action_masks(env)
                actions, values, log_probs = self.policy(obs_tensor, action_masks=action_masks)
                expert = env.env_method("expert_action")
                if any(e is not None for e in expert):
                    for i, e in enumerate(expert):
                        if e is not None:
                            actions[i] = int(e)
                    values, log_probs, _ = self.policy.evaluate_actions(
                        obs_tensor, actions, action_masks=action_masks
                    )
            actions = actions.cpu().numpy()
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            actions = actions.reshape(-1, 1)
            for idx, done in enumerate(dones):
                if (
                    done
                    and infos[idx].get("terminal_observation") is not None
                    and infos[idx].get("TimeLimit.truncated", False)
                ):
                    terminal_obs = self.policy.obs_to_tensor(infos[idx]["terminal_observation"])[0]
                    with th.no_grad():
                        terminal_value = self.policy.predict_values(terminal_obs)[0]
                    rewards[idx] += self.gamma * terminal_value
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
                action_masks=action_masks,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        with th.no_grad():
            values = self.policy.predict_values(obs_as_tensor(new_obs, self.device))  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.on_rollout_end()
        return True


def make_agent(
    env: gym.Env | VecEnv,
    seed: int = 0,
    width: int = 128,
    blocks: int = 2,
    n_steps: int = 1440,
    batch_size: int = 240,
    learning_rate: float = 3e-4,
    gamma: float = 0.9,
    ent_coef: float = 0.01,
    n_epochs: int = 10,
) -> tuple[GuidedMaskablePPO, CurveWriter]:
    """A GuidedMaskablePPO on ``env`` (wrapped in Monitor and DummyVecEnv) and its curve log.

    ``gamma`` is per environment step (one stage decision). A configuration
    mostly decides its own interval's reward (the load is exogenous), so a
    short horizon (0.9: ~10 stage steps) learns far faster than 0.99: on
    chain-3x3 the value loss fell to 0.01–0.07 (``benchmarks/results/rl_compare*.md``)
    where 0.99 kept it near 80 (``rl_compare.md`` as of commit 2721195).
    """
    venv = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: Monitor(env)])
    model = GuidedMaskablePPO(
        "MlpPolicy",
        venv,
        learning_rate=learning_rate,
        n_steps=n_steps,
        batch_size=batch_size,
        n_epochs=n_epochs,
        gamma=gamma,
        ent_coef=ent_coef,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs={
            "features_extractor_class": ResidualExtractor,
            "features_extractor_kwargs": {"width": width, "blocks": blocks},
            "net_arch": {"pi": [64], "vf": [64]},
        },
    )
    writer = CurveWriter()
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    return model, writer


class _Progress(BaseCallback):
    def __init__(self, on_step: Callable[[int], None]) -> None:
        super().__init__()
        self.fn = on_step

    def _on_step(self) -> bool:
        self.fn(self.num_timesteps)
        return True


def train(
    model: GuidedMaskablePPO,
    writer: CurveWriter,
    total_steps: int,
    on_step: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Run PPO for ``total_steps`` environment steps; returns the training curves."""
    callback = _Progress(on_step) if on_step else None
    model.learn(
        total_timesteps=total_steps, callback=callback, log_interval=1, reset_num_timesteps=False
    )
    return pd.DataFrame(writer.rows)


def load(path: str | Path, env: gym.Env | None = None) -> GuidedMaskablePPO:
    """A saved agent (stable-baselines3 zip) on the CPU."""
    return GuidedMaskablePPO.load(str(path), env=env, device="cpu")


def plot_curves(curves: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Loss, value loss and mean episode reward against timesteps, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, label in zip(
        axes,
        ("loss", "value_loss", "ep_reward_mean"),
        ("training loss", "value loss", "mean episode reward"),
        strict=True,
    ):
        if key in curves and "timesteps" in curves:
            ax.plot(curves["timesteps"], curves[key])
        ax.set_title(label)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)


def act(model: GuidedMaskablePPO, obs: np.ndarray, mask: np.ndarray) -> int:
    """The policy's deterministic, mask-respecting action for one observation."""
    action, _ = model.predict(obs, action_masks=mask, deterministic=True)
    return int(action)
