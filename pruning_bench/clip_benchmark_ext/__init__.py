"""CLIP_benchmark integration: the import hook, the pruning flags (`run_config`) wired into
`clip_benchmark eval`, result fields and upstream fixes.

Nothing here edits clip_benchmark's files. A `.pth` file installed next to the package runs
`hook.install()` at interpreter start-up; the hook waits until clip_benchmark's own modules are
imported and only then adapts them (see docs/clip_benchmark_integration.md). Keep this
`__init__` free of imports: it is loaded by every Python process of the environment.
"""
