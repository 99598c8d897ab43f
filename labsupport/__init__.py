"""labsupport: the plumbing behind the InternVL2 course notebooks, one floor per stage of the course map.

core < datasets < model < train < evaluate < serve < publish < sidetracks < course: each floor imports only the
floors below it (held by import-linter in the tests). labsupport/README.md maps every module: what it does, which
environment it runs in, which notebooks use it, and where new code goes.
"""
__version__ = "0.1.0"
