"""The training engine: one accelerator object, the loop over plain settings, data, evaluation
and schedules. It knows no recipe: :mod:`kdcore.distill` translates recipes into its settings."""
