"""The embedded demo world: its problems, the small teacher and student the project builds, and
the whole method end to end as one library call.
"""
