from regbench.cli import main

main()
