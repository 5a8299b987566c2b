from gfprobe.cli import main

main(prog_name="gfprobe")
