from edgeslice.cli import main

main()
