"""What every layer uses: local writes no reader sees half-done (`fileio`), progress bars and log
lines (`progress`), PNG plots (`plots`), starting or joining Ray (`ray_runtime`), checks of user
values (`checks`)."""
