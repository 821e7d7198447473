"""The embedded synthetic device-shift benchmark (``bench data synth``), written in the TAU 2022 layout."""
