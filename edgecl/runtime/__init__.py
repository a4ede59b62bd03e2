"""The runtime: the learner loop all strategies share, and stage timing."""

from edgecl.runtime.learner import Learner, LearnerConfig
from edgecl.runtime.timing import StageTimer

__all__ = ["Learner", "LearnerConfig", "StageTimer"]
