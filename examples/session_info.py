"""Print where this runs and how much session time is left.

python examples/session_info.py
"""

import colabsession as cs

rt = cs.runtime()
print(f"running on {rt.kind}, Python {rt.python}; Drive stands at {rt.drive_root}")
clock = cs.clock()
print(clock)
if clock.should_stop(margin="30min"):
    print("less than 30 minutes left: save your work now")
