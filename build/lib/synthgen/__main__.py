from synthgen.cli import app

app(prog_name="synthgen")
