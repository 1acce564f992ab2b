"""AnyStory on FLUX.1-dev: learned per-token routing of each subject's redux and reference tokens."""
