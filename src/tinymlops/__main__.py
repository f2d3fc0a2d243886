from tinymlops.cli.app import main

main()
