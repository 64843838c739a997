"""Distillation on top of the engine: the teacher, preparation and student stages, the student's
loss, networks with their feature taps, and the store of shared teachers."""
