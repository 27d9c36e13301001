"""Scoring responses by each question type's rules, blanks and column matching included."""

from __future__ import annotations

import pytest

from examq.exam.errors import ExamInputError
from examq.exam.gift import parse_gift
from examq.exam.keys import parse_key_csv
from examq.exam.scoring import number_readings, parse_number, score_responses

EXAM = """::single::Capital of France? {=Paris ~Lyon ~%-50%Marseille}

::multi::Primes? {~%50%2 ~%50%3 ~%-100%4}

::tf::The sky is blue. {T}

::short::Capital of Italy? {=Rome =%50%Roma =%50%R*a}

::num::Pi? {#3.1415:0.0005}

::range::Pick a negative number above -5. {#-5..-0.5}

::match::Match. {=Canada -> Ottawa =Italy -> Rome =Japan -> Tokyo}

::essay::Explain. {}
"""

HEADER = "student,single,multi,tf,short,num,range,match"


def _score(
    *rows: str, exam_text: str = EXAM, header: str = HEADER
) -> list[list[float]]:
    exam = parse_gift(exam_text)
    scored = score_responses(exam, header + "\n" + "\n".join(rows) + "\n")
    return scored.points.tolist()


def test_scoring_gives_full_marks_for_right_answers_of_every_type() -> None:
    rows = _score(
        's1,Paris,"2;3",true,Rome,3.1415,-1,"Canada->Ottawa; Italy->Rome; Japan->Tokyo"'
    )

    assert rows == [[1, 1, 1, 1, 1, 1, 1]]


def test_scoring_choice_by_letter_text_and_negative_weight() -> None:
    rows = _score(
        *(
            f"s{i},{cell},,,,,,"
            for i, cell in enumerate(["A", "paris", " B ", "Marseille", "Nice"])
        )
    )

    assert [row[0] for row in rows] == [1, 1, 0, -0.5, 0]


def test_scoring_multiple_response_adds_weights_and_clamps_to_zero_and_one() -> None:
    cells = ['"2,3"', "2", "A|B|C", '"2;4"', "4", '"3;3"', "7"]
    rows = _score(*(f"s{i},,{cell},,,,," for i, cell in enumerate(cells)))

    assert [row[1] for row in rows] == [1, 0.5, 0, 0, 0, 0.5, 0]


def test_scoring_true_false_spellings() -> None:
    rows = _score(
        *(
            f"s{i},,,{cell},,,,"
            for i, cell in enumerate(["T", "yes", "1", "False", "no", "maybe"])
        )
    )

    assert [row[2] for row in rows] == [1, 1, 1, 0, 0, 0]


def test_scoring_short_answer_case_spaces_and_wildcards() -> None:
    cells = ["rome", "  ROME  ", "Roma", "Rosa", "Ro me", "Rome!"]
    rows = _score(*(f"s{i},,,,{cell},,," for i, cell in enumerate(cells)))

    # Case and surrounding spaces are ignored; the first matching answer counts;
    # R*a matches Rosa; inner spaces and extra characters do not match.
    assert [row[3] for row in rows] == [1, 1, 0.5, 0.5, 0, 0]


def test_scoring_short_answer_is_case_sensitive_when_the_question_says_so() -> None:
    exam = parse_gift("::cs::Symbol of sodium? {=Na}")
    question = exam.questions[0]
    question.answers[0].case_sensitive = True

    scored = score_responses(exam, "student,cs\ns1,Na\ns2,NA\n")

    assert scored.points[:, 0].tolist() == [1, 0]


def test_scoring_numerical_tolerance_ranges_negatives_and_decimal_commas() -> None:
    cells = ["3.141", "3.142", '"3,1415"', "3.1406", "pi", "3.1415e0"]
    rows = _score(*(f"s{i},,,,,{cell},," for i, cell in enumerate(cells)))
    ranges = _score(
        *(
            f"s{i},,,,,,{cell},"
            for i, cell in enumerate(["-5", "-0.5", "-3", "-0.4", "2", "−2"])
        )
    )

    assert [row[4] for row in rows] == [1, 1, 1, 0, 0, 1]
    assert [row[5] for row in ranges] == [1, 1, 1, 0, 0, 1]


def test_scoring_numerical_takes_the_first_matching_answer() -> None:
    exam = parse_gift("::born::Grant was born in? {#=1822:0 =%50%1822:2}")

    scored = score_responses(exam, "student,born\ns1,1822\ns2,1823\ns3,1825\n")

    assert scored.points[:, 0].tolist() == [1, 0.5, 0]


def test_scoring_matching_gives_credit_per_right_pair() -> None:
    cells = [
        '"Canada -> Ottawa; Italy -> Rome; Japan -> Kyoto"',
        "Canada: Ottawa",
        "japan=tokyo|italy=rome",
        "Ottawa",
    ]
    rows = _score(*(f"s{i},,,,,,,{cell}" for i, cell in enumerate(cells)))

    assert [round(row[6], 4) for row in rows] == [0.6667, 0.3333, 0.6667, 0]


def test_scoring_blank_and_missing_cells_score_zero_and_are_counted() -> None:
    exam = parse_gift(EXAM)

    scored = score_responses(exam, HEADER + "\ns1,,,,,,,\ns2,Paris\n")

    assert scored.points.tolist() == [[0] * 7, [1, 0, 0, 0, 0, 0, 0]]
    assert int(scored.blank.sum()) == 13
    assert scored.selections["Q1"] == [("(blank)",), ("A",)]


def test_scoring_finds_columns_by_title_id_or_position() -> None:
    exam = parse_gift("::First::A? {=x ~y}\n\n::Second::B? {=z ~w}")

    by_position = score_responses(exam, "Surname,Response 1,Response 2\nAda,x,z\n")
    by_id = score_responses(exam, "id,Q2,Q1\nAda,z,y\n")

    assert by_position.points.tolist() == [[1, 1]]
    assert by_position.student_ids == ["Ada"]
    assert by_id.points.tolist() == [[0, 1]]


def test_a_question_left_out_of_the_key_does_not_shift_the_later_columns() -> None:
    exam = parse_key_csv("item,key\n1,A\n3,C\n4,D\n")

    scored = score_responses(exam, "student,Q1,Q2,Q3,Q4\nperfect,A,B,C,D\n")

    assert scored.points.tolist() == [[1, 1, 1]]

    named = parse_key_csv("item,key\nQ1,A\nQ3,C\nQ4,D\n")
    assert score_responses(named, "student,1,2,3,4\nperfect,A,B,C,D\n").points.tolist() == [[1, 1, 1]]


def test_titles_win_over_ids_made_up_from_the_order_of_the_file() -> None:
    # A bank exported in title order: the file's second question is titled Q3.
    exam = parse_gift(
        "::Q1::Two plus two? {=4 ~3}\n\n::Q3::Capital of France? {~Lyon =Paris}\n\n"
        "::Q2::The sky is blue. {T}\n\n::Q4::Pi? {#3.14:0.005}\n"
    )

    scored = score_responses(exam, "student,Q1,Q2,Q3,Q4\nperfect,4,TRUE,Paris,3.14\n")

    assert scored.points.tolist() == [[1, 1, 1, 1]]


def test_numbered_columns_that_cannot_all_be_matched_by_number_are_refused() -> None:
    exam = parse_key_csv("item,key\n1,A\n3,C\n5,D\n")

    with pytest.raises(ExamInputError, match="no column for question"):
        score_responses(exam, "student,Q1,Q2,Q3,Q4\nperfect,A,B,C,D\n")


def test_scoring_points_scale_the_fraction() -> None:
    exam = parse_gift("::q::A? {~%50%x ~%50%y ~z}")
    exam.questions[0].points = 4

    scored = score_responses(exam, "student,q\ns1,x\n")

    assert scored.points.tolist() == [[2]] and scored.max_points == [4]


@pytest.mark.parametrize(
    ("responses", "fragment"),
    [
        ("student,single\ns1,Paris\n", "no column for question(s) Q2 (multi), Q3 (tf)"),
        (HEADER + "\n", "no student rows"),
        (HEADER + "\ns1\ns1\n", "'s1' twice (lines 2 and 3)"),
        (HEADER + '\ns1,"Paris\n', "not valid CSV"),
        ("", "is empty"),
    ],
)
def test_scoring_refuses_malformed_responses_naming_the_problem(
    responses: str, fragment: str
) -> None:
    with pytest.raises(ExamInputError, match="responses.csv") as raised:
        score_responses(parse_gift(EXAM), responses)

    assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("cell", "value"),
    [("3.5", 3.5), ("-2", -2.0), ("1e3", 1000.0), ("3,5", 3.5), (" +4 ", 4.0)],
)
def test_parse_number_reads_common_spellings(cell: str, value: float) -> None:
    assert parse_number(cell) == value


@pytest.mark.parametrize("cell", ["", "abc", "1,000.5", "nan", "inf", "1.2.3"])
def test_parse_number_refuses_what_is_not_a_plain_number(cell: str) -> None:
    assert parse_number(cell) is None


def test_scoring_reads_a_semicolon_key_and_responses() -> None:
    exam = parse_key_csv("sep=;\nitem;key\n1;A\n2;B\n")

    scored = score_responses(exam, "student;Q1;Q2\ns1;A;C\n")

    assert scored.points.tolist() == [[1, 0]]


@pytest.mark.parametrize(
    ("cell", "readings"),
    [("1,000", [1000.0, 1.0]), ("1,822", [1822.0, 1.822]), ("12,345,678", [12345678.0]),
     ("1,000.5", [1000.5]), ("3,14", [3.14]), ("0,125", [0.125]), ("abc", [])],
)
def test_number_readings_give_both_meanings_of_a_grouping_comma(cell: str, readings: list[float]) -> None:
    assert number_readings(cell) == readings


def test_a_numerical_answer_with_a_thousands_comma_earns_its_credit() -> None:
    exam = parse_gift("::n::How many? {#1000:10}\n\n::d::Pi? {#3.14:0.01}")

    scored = score_responses(exam, "student,n,d\nen,\"1,000\",3.14\nfr,1000,\"3,14\"\nwrong,\"1,200\",3\n")

    assert scored.points.tolist() == [[1, 1], [1, 1], [0, 0]]



def test_a_key_csv_with_several_answers_accepts_them_in_any_order() -> None:
    exam = parse_key_csv("item,key\nq1,A;C\n")

    scored = score_responses(exam, "student,q1\ns1,C;A\ns2,A|C\ns3,A;B;C\n")

    assert scored.points.tolist() == [[1], [1], [0]]


def test_three_answers_of_a_third_make_a_whole_point() -> None:
    exam = parse_gift("::m::Pick the primes. {~%33.33333%2 ~%33.33333%3 ~%33.33333%5 ~%-100%4}")

    scored = score_responses(exam, "student,m\ns1,A;B;C\n")

    assert scored.max_points == [1] and scored.points.tolist() == [[1]]


def test_letters_run_together_name_several_choices() -> None:
    exam = parse_gift("::m::Pick two. {~%50%one ~%50%two ~%-100%three}")

    scored = score_responses(exam, "student,m\nscanner,AB\nwrong,AC\nwords,xyz\n")

    assert scored.points.tolist() == [[1], [0], [0]]
