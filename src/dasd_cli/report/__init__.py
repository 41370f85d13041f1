"""Human-facing reports of dasd results: explain views and plots."""
