from gfprobe.console import main

main()
