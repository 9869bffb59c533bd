from workpool.cli import app

app(prog_name="workpool")
