def main():
    raise SystemExit("the comparison harness is not built yet")


if __name__ == "__main__":
    main()
