"""What a command does, callable from Python as from the CLI: each run is a function with
typed inputs and a typed result (``prepare``, ``render``, ``bench``, ``stylize``). A run
raises ``NSTError`` for anything the user must fix (one line naming the file, field or
location and what to do); it reports what happens as it goes to a ``Listener``
(``runs.events``), so the CLI shows it live and a script may ignore it. The CLI only
parses options, calls one run, shows its result and maps errors to exit codes."""
