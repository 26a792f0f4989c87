"""Task registry and gymnasium wrappers: names, spaces, D4RL maze protocol."""

import importlib.util

import numpy as np
import pytest

from diffctl.envs.registry import TASKS, get_task, make_env, normalized_score


def test_get_task_known_and_dataset_names():
    spec = get_task("maze2d-umaze")
    assert (spec.obs_dim, spec.goal_dim, spec.action_dim, spec.max_episode_steps) == (4, 2, 2, 300)
    assert get_task("maze2d-medium").max_episode_steps == 600
    assert get_task("maze2d-large").max_episode_steps == 800
    assert get_task("hopper-medium-replay").name == "hopper"
    assert get_task("walker2d-medium-expert").name == "walker2d"


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="maze2d-umaze") as err:
        get_task("maze2d-tiny")
    assert "halfcheetah" in str(err.value) and "maze2d-tiny" in str(err.value)


def test_normalized_score_uses_d4rl_references():
    assert normalized_score("maze2d-umaze", 161.86) == pytest.approx(100.0)
    assert normalized_score("hopper", -20.272305) == pytest.approx(0.0)
    assert normalized_score("halfcheetah-medium", 12135.0) == pytest.approx(100.0)


def test_maze_env_spaces_and_protocol():
    env = make_env("maze2d-umaze", seed=3)
    obs, info = env.reset(seed=3, options={"goal_cell": np.array(get_task("maze2d-umaze").eval_goal_cell)})
    assert obs.shape == (6,) and obs.dtype == np.float32
    assert env.observation_space.shape == (6,)
    assert np.allclose(env.action_space.low, -1) and np.allclose(env.action_space.high, 1)
    np.testing.assert_allclose(obs[4:], info["goal"], atol=1e-6)
    goal = obs[4:].copy()
    steps, truncated = 0, False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.0]))
        steps += 1
        assert not terminated
        assert reward == float(np.linalg.norm(obs[:2] - obs[4:]) <= 0.5)
        np.testing.assert_allclose(obs[4:], goal)
    assert steps == 300
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    env.close()


def test_maze_env_reward_when_placed_at_goal():
    env = make_env("maze2d-umaze")
    obs, _ = env.reset(seed=0, options={"goal_cell": np.array([1, 1]), "reset_cell": np.array([1, 1])})
    if np.linalg.norm(obs[:2] - obs[4:]) < 0.3:
        _, reward, _, _, info = env.step(np.zeros(2))
        assert reward == 1.0 and info["success"]
    env.close()


@pytest.mark.parametrize("task", ["hopper", "halfcheetah", "walker2d"])
def test_locomotion_env_flat_float32(task):
    env = make_env(task, seed=0)
    spec = get_task(task)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (spec.obs_dim,) and obs.dtype == np.float32
    assert env.action_space.shape == (spec.action_dim,)
    obs, *_ = env.step(env.action_space.sample())
    assert obs.dtype == np.float32
    env.close()


@pytest.mark.skipif(importlib.util.find_spec("gym_pusht") is not None, reason="gym-pusht is installed")
def test_pusht_without_extra_says_how_to_install():
    with pytest.raises(ImportError, match=r"diffctl\[pusht\]"):
        make_env("pusht")


def test_every_task_has_a_spec():
    assert set(TASKS) == {
        "maze2d-umaze",
        "maze2d-medium",
        "maze2d-large",
        "hopper",
        "halfcheetah",
        "walker2d",
        "pusht",
        *(f"fetch-{t}{v}" for t in ("reach", "push", "pick-place") for v in ("", "-image")),
    }
    assert [TASKS[f"fetch-{t}-image"].image_size for t in ("reach", "push", "pick-place")] == [84, 84, 84]
    assert TASKS["fetch-push"].flat_obs_dim == 28 and TASKS["fetch-push-image"].flat_obs_dim == 13
