from workpool.doctor import app

app(prog_name="workpool")
