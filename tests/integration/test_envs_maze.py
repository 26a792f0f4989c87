"""Maze geometry, the direct MuJoCo stepper and the waypoint expert."""

import numpy as np
import pytest

from diffctl.envs.experts import MazeExpertAgent, WaypointController
from diffctl.envs.maze import PointMassSim, maze_layout
from diffctl.envs.registry import get_task, make_env


def test_layout_cells_round_trip_and_bfs():
    lay = maze_layout("maze2d-umaze")
    cells = lay.free_cells
    np.testing.assert_array_equal(lay.xy_to_cell(lay.cell_to_xy(cells)), cells)
    dist = lay.distances_to((1, 1))
    assert dist[1, 1] == 0 and dist[3, 1] == 6 and np.isinf(dist[0, 0])
    with pytest.raises(ValueError, match="wall"):
        lay.distances_to((0, 0))
    assert tuple(lay.next_cell_table[1 * lay.cols + 1][3, 1]) == (3, 2)


def test_sim_matches_gymnasium_env_step_for_step():
    env = make_env("maze2d-medium")
    env.reset(seed=1)
    sim = PointMassSim("maze2d-medium", 1)
    qpos = env.unwrapped.data.qpos.copy()
    sim.set_state(qpos[None], np.zeros((1, 2)))
    rng = np.random.default_rng(0)
    for _ in range(300):
        action = rng.uniform(-1.5, 1.5, size=2)
        sim.step(action[None])
        env.step(action)
        np.testing.assert_allclose(sim.pos[0], env.unwrapped.data.qpos, atol=1e-9)
        np.testing.assert_allclose(sim.vel[0], env.unwrapped.data.qvel, atol=1e-9)
    env.close()


@pytest.mark.parametrize("task", ["maze2d-umaze", "maze2d-medium", "maze2d-large"])
def test_expert_reaches_goals_in_every_maze(task):
    from diffctl.datasets.generators.maze import evaluate_expert

    result = evaluate_expert(task, episodes=16, seed=0, action_noise=0.5)
    assert result["success_rate"] == 1.0
    assert result["mean_return"] > 0.3 * get_task(task).max_episode_steps


def test_expert_agent_in_gym_env_stays_at_goal():
    env = make_env("maze2d-umaze")
    agent = MazeExpertAgent("maze2d-umaze", noise=0.0)
    obs, _ = env.reset(seed=5, options={"goal_cell": np.array([1, 1])})
    agent.reset()
    total = 0.0
    for _ in range(300):
        obs, reward, _, _, info = env.step(agent.act(obs))
        total += reward
    assert info["success"] and reward == 1.0 and total > 100
    with pytest.raises(ValueError, match="6 finite"):
        agent.act(np.zeros(4))
    env.close()


def test_controller_is_pd_toward_waypoint():
    ctrl = WaypointController(maze_layout("maze2d-umaze"))
    goal = np.array([[0.05, 0.0]])
    lay = ctrl.layout
    pos = lay.cell_to_xy(np.array([[2, 3]]))
    wp = ctrl.waypoints(pos, lay.cell_to_xy(np.array([[1, 1]])))
    assert tuple(lay.xy_to_cell(wp)[0]) in {(1, 3), (3, 3)}
    a = ctrl(np.array([[0.0, 0.0]]), np.array([[0.02, 0.0]]), goal)
    np.testing.assert_allclose(a, [[10 * 0.05 - 0.02, 0.0]])
