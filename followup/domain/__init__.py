"""The rules, pure: no database, no network, no files, no clock. Everything here takes the
facts it needs and `now` as arguments, so that every rule can be tested on its own, the planner
over generated shops and clocks."""
