"""Named poses of the ten-segment skeleton and each class's (rest, peak) motion, as plain data.

A pose is a float array of absolute segment angles in degrees, in ``SEGMENTS`` order:
0 points down the image, 90 points right (+x), 180 points up, -90 points left. Side-view
poses face right; mirroring negates every angle. ``MOTIONS`` maps a class key to its
(rest pose, peak pose) pair: the six trained exercises of ``EXERCISES`` first, then the
novel classes of ``NOVEL`` (never seen by the demo model).
"""
from __future__ import annotations

import numpy as np

SEGMENTS = (
    "torso", "head",
    "upper_arm_l", "forearm_l", "upper_arm_r", "forearm_r",
    "thigh_l", "shin_l", "thigh_r", "shin_r",
)  # fmt: skip


def _pose(**angles: float) -> np.ndarray:
    return np.array([angles[s] for s in SEGMENTS], dtype=np.float64)


POSES: dict[str, np.ndarray] = {
    "standing": _pose(torso=180, head=180, upper_arm_l=-12, forearm_l=-6, upper_arm_r=12,
                      forearm_r=6, thigh_l=-6, shin_l=-3, thigh_r=6, shin_r=3),
    "hands_on_hips": _pose(torso=180, head=180, upper_arm_l=-38, forearm_l=50, upper_arm_r=38,
                           forearm_r=-50, thigh_l=-6, shin_l=-3, thigh_r=6, shin_r=3),
    "squat": _pose(torso=140, head=160, upper_arm_l=85, forearm_l=90, upper_arm_r=95,
                   forearm_r=95, thigh_l=80, shin_l=-25, thigh_r=88, shin_r=-18),
    "jumping_jack": _pose(torso=180, head=180, upper_arm_l=-140, forearm_l=-160, upper_arm_r=140,
                          forearm_r=160, thigh_l=-22, shin_l=-26, thigh_r=22, shin_r=26),
    "plank": _pose(torso=98, head=100, upper_arm_l=0, forearm_l=90, upper_arm_r=6, forearm_r=92,
                   thigh_l=-84, shin_l=-86, thigh_r=-86, shin_r=-88),
    "plank_high": _pose(torso=103, head=105, upper_arm_l=-3, forearm_l=-3, upper_arm_r=3,
                        forearm_r=3, thigh_l=-80, shin_l=-82, thigh_r=-82, shin_r=-84),
    "pushup_low": _pose(torso=95, head=98, upper_arm_l=-60, forearm_l=25, upper_arm_r=-55,
                        forearm_r=30, thigh_l=-86, shin_l=-87, thigh_r=-87, shin_r=-89),
    "lunge": _pose(torso=180, head=180, upper_arm_l=-8, forearm_l=-4, upper_arm_r=8,
                   forearm_r=4, thigh_l=75, shin_l=0, thigh_r=-35, shin_r=-80),
    # --- novel classes (the demo model was never trained on these) ---
    # On the back, knees bent, arms along the floor -> torso curled up, hands reaching to the knees.
    "situp_down": _pose(torso=-90, head=-95, upper_arm_l=88, forearm_l=90, upper_arm_r=92,
                        forearm_r=90, thigh_l=138, shin_l=42, thigh_r=142, shin_r=46),
    "situp_up": _pose(torso=-145, head=-150, upper_arm_l=112, forearm_l=100, upper_arm_r=116,
                      forearm_r=104, thigh_l=138, shin_l=42, thigh_r=142, shin_r=46),
    # One thigh driven up to horizontal, the opposite arm pumping forward.
    "high_knee": _pose(torso=180, head=180, upper_arm_l=-35, forearm_l=-10, upper_arm_r=50,
                       forearm_r=150, thigh_l=95, shin_l=0, thigh_r=-4, shin_r=-2),
    # Front view: a straight body tilted up from the feet, one straight arm to the floor, one up.
    "side_plank": _pose(torso=112, head=112, upper_arm_l=2, forearm_l=2, upper_arm_r=178,
                        forearm_r=178, thigh_l=-68, shin_l=-68, thigh_r=-70, shin_r=-70),
    # A high plank with one knee driven forward under the chest.
    "climber": _pose(torso=103, head=105, upper_arm_l=-3, forearm_l=-3, upper_arm_r=3,
                     forearm_r=3, thigh_l=40, shin_l=-60, thigh_r=-82, shin_r=-84),
    "arms_up": _pose(torso=180, head=180, upper_arm_l=-172, forearm_l=-176, upper_arm_r=172,
                     forearm_r=176, thigh_l=-4, shin_l=-2, thigh_r=4, shin_r=2),
    # Flat on the back, head to the left, arms along the body.
    "lying": _pose(torso=-90, head=-92, upper_arm_l=90, forearm_l=90, upper_arm_r=93,
                   forearm_r=92, thigh_l=90, shin_l=90, thigh_r=92, shin_r=93),
    # Thighs level (on a chair, see PROPS), shins down, hands resting on the thighs.
    "sitting": _pose(torso=178, head=182, upper_arm_l=20, forearm_l=80, upper_arm_r=25,
                     forearm_r=85, thigh_l=88, shin_l=2, thigh_r=92, shin_r=5),
    # Two mirror-image strides; a gait cycle is walk_a -> walk_b -> walk_a.
    "walk_a": _pose(torso=176, head=178, upper_arm_l=-25, forearm_l=-15, upper_arm_r=25,
                    forearm_r=45, thigh_l=25, shin_l=15, thigh_r=-22, shin_r=-40),
    "walk_b": _pose(torso=176, head=178, upper_arm_l=25, forearm_l=45, upper_arm_r=-25,
                    forearm_r=-15, thigh_l=-22, shin_l=-40, thigh_r=25, shin_r=15),
    # Standing, one hand (holding a bottle, see PROPS) raised to the mouth, head tilted back.
    "drinking": _pose(torso=180, head=192, upper_arm_l=-12, forearm_l=-6, upper_arm_r=100,
                      forearm_r=239, thigh_l=-6, shin_l=-3, thigh_r=6, shin_r=3),
}

# class key -> (rest pose, peak pose). A rep is rest -> peak -> rest; a still image of a class
# shows a pose between the two, near the peak (see ``STILL_PHASE``).
MOTIONS: dict[str, tuple[str, str]] = {
    "standing": ("standing", "standing"),
    "squat": ("standing", "squat"),
    "jumping_jack": ("standing", "jumping_jack"),
    "plank": ("plank", "plank"),
    "pushup": ("plank_high", "pushup_low"),
    "lunge": ("standing", "lunge"),
    "sit_up": ("situp_down", "situp_up"),
    "high_knees": ("standing", "high_knee"),
    "side_plank": ("side_plank", "side_plank"),
    "mountain_climber": ("plank_high", "climber"),
    "arms_raised": ("standing", "arms_up"),
    "lying_down": ("lying", "lying"),
    "sitting": ("sitting", "sitting"),
    "walking": ("walk_a", "walk_b"),
    "drinking": ("standing", "drinking"),
}

# Phase range (0 = rest, 1 = peak) of still images; a walk is a walk at every phase.
STILL_PHASE: dict[str, tuple[float, float]] = {"walking": (0.0, 1.0)}
DEFAULT_STILL_PHASE = (0.7, 1.0)

# Poses drawn with hands and feet both on the floor (the body is levelled between them).
HORIZONTAL = frozenset({"plank", "plank_high", "pushup_low", "side_plank", "climber"})

# class key -> objects drawn with the figure ("chair" under the hips, "bottle" in the right hand).
PROPS: dict[str, tuple[str, ...]] = {"sitting": ("chair",), "drinking": ("bottle",)}
